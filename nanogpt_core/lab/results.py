"""One way to write a lab result: the figures plus where they came from.

Every experiment that produces a figure for the book writes its JSON through ``save_result``,
which stamps the hardware (CPU model, threads and matmul extensions, or the GPU), the torch
and Python versions, the date, the command that produced it and the seeds, so that a reader
can tell which row matches their machine and re-run it.
"""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

import torch

from ..hardware import describe_hardware, pick_device


def provenance(command: str, seeds=None, device: str = "auto") -> dict:
    """Where a result comes from: command, seeds, hardware, torch and Python versions, date."""
    return {"command": command, "seeds": list(seeds) if seeds is not None else None,
            "hardware": describe_hardware(pick_device(device)), "torch_version": str(torch.__version__),
            "python": platform.python_version(), "date": datetime.date.today().isoformat()}


def save_result(result: dict, path: str | Path | None, command: str, seeds=None, device: str = "auto") -> dict:
    """``result`` stamped with its provenance (its own keys win), written as JSON to ``path`` if given."""
    stamped = {**provenance(command, seeds, device), **result}
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(stamped, indent=1))
    return stamped
