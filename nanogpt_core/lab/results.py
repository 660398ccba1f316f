"""One way to write a lab result: the figures plus where they came from.

Every experiment that produces a figure for the book writes its JSON through ``save_result``,
which stamps the hardware (CPU model, threads and matmul extensions, or the GPU), the torch
and Python versions, the date, the command that produced it and the seeds, so that a reader
can tell which row matches their machine and re-run it.
"""

from __future__ import annotations

import datetime
import json
import os
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


# ---- the committed results, from wherever a chapter runs ----------------------------------------

RESULTS = Path("book") / "results"


def committed(name: str) -> Path:
    """The committed result file ``book/results/<name>`` of the course, found from wherever the
    caller runs: ``chapters/``, the book's staged build (``book/_build/src/chapters``), a
    ``student/`` folder, a grader's sandbox, a Colab or JupyterHub checkout.

    Looked for, in order: under ``$NANOGPT_COURSE_ROOT``; in the nearest folder at or above the
    working directory that has ``book/results/<name>``; in the checkout the package runs from
    (an editable install). The first that exists wins."""
    here = Path.cwd().resolve()
    roots = [Path(os.environ["NANOGPT_COURSE_ROOT"])] if os.environ.get("NANOGPT_COURSE_ROOT") else []
    roots += [here, *here.parents, Path(__file__).resolve().parents[2]]
    for root in roots:
        if (root / RESULTS / name).is_file():
            return root / RESULTS / name
    raise FileNotFoundError(
        f"no committed result {RESULTS / name} at or above {here}, nor in the checkout of the package "
        f"({Path(__file__).resolve().parents[2]}): run the chapter from a checkout of the course "
        "(its chapters/ folder), or set NANOGPT_COURSE_ROOT to the checkout's folder")


def load_committed(name: str) -> dict:
    """The committed result ``book/results/<name>`` (see ``committed``), parsed."""
    return json.loads(committed(name).read_text())


# ---- seeds: mean, spread, and whether a difference is noise -------------------------------------


def spread(values) -> dict:
    """Mean, sample standard deviation, min and max of one figure over seeds (n >= 1)."""
    import statistics

    values = [float(v) for v in values]
    return {"n": len(values), "mean": statistics.mean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "min": min(values), "max": max(values)}


def significant(x: float, digits: int = 2) -> str:
    """``x`` rounded to ``digits`` significant figures (0.012345 -> '0.012', 2.345 -> '2.3')."""
    return f"{float(f'{x:.{digits}g}'):g}" if x else "0"


def significant_pm(s: dict | None, missing: str = "-") -> str:
    """A ``spread`` as 'mean ± std', the mean to 2 significant figures and the std to 1 ('mean (1 seed)'
    when there is one value: no spread to show; ``missing`` if None)."""
    if s is None:
        return missing
    return f"{significant(s['mean'])} (1 seed)" if s["n"] == 1 else f"{significant(s['mean'])} ± {significant(s['std'], 1)}"


def mean_pm(values, digits: int = 3) -> str:
    """'mean ± std (n seeds)' with ``digits`` decimals: how the book prints a figure over seeds."""
    s = spread(values)
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f} (1 seed)"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} (n={s['n']})"


def paired_difference(a, b) -> dict:
    """``b - a`` seed by seed (the lists are aligned by seed), with its mean, spread and verdict.

    The verdict is "noise" when the seed-to-seed spread of the difference (its min..max) contains
    zero, "b lower" or "b higher" when every seed moves the same way. With 3 seeds this is a
    crude test, and the book says so; it never calls a difference real that one seed reverses.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_difference needs the same seeds on both sides ({len(a)} vs {len(b)} values)")
    diffs = [float(y) - float(x) for x, y in zip(a, b)]
    s = spread(diffs)
    verdict = "noise" if s["min"] <= 0.0 <= s["max"] else ("b lower" if s["max"] < 0 else "b higher")
    return {**s, "diffs": diffs, "verdict": verdict}


VERDICT_WORDS = {"noise": "noise (the seed range contains 0)", "b lower": "lower on every seed",
                 "b higher": "higher on every seed"}


def describe_difference(name: str, d: dict, unit: str = "bpb") -> str:
    """One line for a ``paired_difference``: its mean, its seed range and the verdict, in words."""
    return (f"{name}: {d['mean']:+.4f} {unit} (seed range {d['min']:+.4f} .. {d['max']:+.4f}): "
            f"{VERDICT_WORDS.get(d['verdict'], d['verdict'])}")
