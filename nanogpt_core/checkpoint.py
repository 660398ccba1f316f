"""Checkpoints: what a run writes to disk, and the checks that a resume continues the same run.

A checkpoint holds the config, the model's weights, the optimizer and loader state, the result
so far and the step. With several processes each keeps its own optimizer share and loader
position in ``rank_path(path, r)``; rank 0 writes the main file after a barrier. It records the
data it was trained on (``data_identity``), so that ``check_resume`` can refuse a resume on
other data or with other settings, with a message that says what differs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .config import Config
from .data import TokenizedCorpus

# 1: config, model, optimizer, loader, result, step, world_size. 2: adds "format": {"version": 2,
# "data": data_identity(...)}, so a resume can check that it continues the same run on the same data.
# 3: Muon updates q, k and v apart (its state per matrix) and reads its schedules from the loop;
# validation is run 1's. An older checkpoint can be evaluated and sampled, not resumed.
CHECKPOINT_FORMAT = 3
# Config fields a resumed run may change: how it runs, not what it trains.
RESUME_MAY_CHANGE = ("device", "compile", "bf16", "eval_every", "eval_steps")


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not belong to the run resuming it; the message says why."""


def rank_path(path: str | Path, rank: int) -> Path:
    """Where process ``rank`` of a multi-process run keeps its share of checkpoint ``path``."""
    path = Path(path)
    return path.with_name(f"{path.name}.rank{rank}")


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def tokenizer_fingerprint(enc) -> str:
    """16 hex digits of a hash of the tokenizer's split pattern, merge table and special tokens."""
    tok = hashlib.sha256(enc._pat_str.encode())
    for token, rank in sorted(enc._mergeable_ranks.items(), key=lambda kv: kv[1]):
        tok.update(rank.to_bytes(4, "little") + token)
    tok.update(json.dumps(sorted(enc._special_tokens.items())).encode())
    return tok.hexdigest()[:16]


def data_identity(data: TokenizedCorpus) -> dict:
    """A cheap fingerprint of a run's data: the tokenizer's merges and specials, and the first
    2^20 val tokens (plus the number of train and val documents where they are in memory). Two
    runs on the same shards and tokenizer agree, wherever the files are; another tokenizer or
    another val split does not."""
    val = itertools.islice((t for doc in data.val_source() for t in doc), 1 << 20)
    ident = {"vocab_size": data.enc.n_vocab, "tokenizer": tokenizer_fingerprint(data.enc),
             "val": hashlib.sha256(np.fromiter(val, dtype=np.int64).tobytes()).hexdigest()[:16]}
    if isinstance(data.val_docs, Sequence):
        ident["val_docs"] = len(data.val_docs)
    if isinstance(data.train_docs, list):
        ident["train_docs"] = len(data.train_docs)
    return ident


def save_checkpoint(path: str | Path, model, optimizer, loader, step: int, cfg: Config, result,
                    rank: int = 0, world_size: int = 1, data_id: dict | None = None) -> None:
    """Write a checkpoint atomically: to a temporary file first, then rename over the target.

    Every process calls it. With several processes, each one's optimizer state (sharded: each
    holds its own part) and loader position differ, so each writes them to ``rank_path(path, r)``;
    after a barrier, rank 0 writes ``path`` (model, config, result), which names the step.
    ``result``: the run's ``train.RunResult`` so far. ``data_id``: the run's ``data_identity``,
    kept so that a resume can check it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    own = {"step": step, "optimizer": optimizer.state_dict(), "loader": loader.state_dict()}
    if world_size > 1:
        _atomic_save(own, rank_path(path, rank))
        dist.barrier()  # every share is on disk before the main file says this step is complete
    if rank == 0:
        raw_model = getattr(model, "_orig_mod", model)
        _atomic_save({"config": cfg.to_dict(), "model": raw_model.state_dict(), "result": asdict(result),
                      "world_size": world_size, "format": {"version": CHECKPOINT_FORMAT, "data": data_id},
                      **(own if world_size == 1 else {"step": step})}, path)


def load_run_state(path: str | Path, rank: int, world_size: int, map_location="cpu") -> tuple[dict, dict]:
    """The checkpoint at ``path`` and this process's optimizer and loader state in it."""
    ckpt = load_checkpoint(path, map_location)
    written_by = ckpt.get("world_size", 1)
    if written_by != world_size:
        raise CheckpointError(f"{path} was written by {written_by} process(es); resume it with the same number "
                              f"(torchrun --nproc_per_node={written_by}), not {world_size}")
    for key in ("optimizer", "loader", "result") if world_size == 1 else ("result",):
        if key not in ckpt:
            raise CheckpointError(f"{path} has no {key!r} entry, so it cannot be resumed (only evaluated or sampled)")
    if world_size == 1:
        return ckpt, ckpt
    own = load_checkpoint(rank_path(path, rank), map_location, keys=("step", "optimizer", "loader"))
    if own["step"] != ckpt["step"]:
        raise CheckpointError(f"{rank_path(path, rank)} is from step {own['step']} but {path} from step {ckpt['step']}: "
                              "a save was interrupted; resume from an earlier checkpoint")
    return ckpt, own


def load_checkpoint(path: str | Path, map_location="cpu", keys=("config", "model", "step")) -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers, no code.

    CheckpointError (a ValueError) for a file that is not a whole checkpoint of this format."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the checkpoint file written by train --checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        why = str(err).strip().splitlines()[0].split(". ")[0][:160] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({why}); it may be truncated or not a "
                              "checkpoint at all: delete it and resume from an earlier one, or train again") from err
    missing = [k for k in keys if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is a PyTorch file but not a checkpoint written by train --checkpoint "
                              f"(no {', '.join(map(repr, missing))} entry)")
    version = (ckpt.get("format") or {}).get("version", 1)
    if version > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {version}, newer than this nanogpt_core reads "
                              f"({CHECKPOINT_FORMAT}); update nanogpt_core")
    return ckpt


def checkpoint_config(ckpt: dict, path: str | Path) -> Config:
    """The Config a checkpoint was written with (CheckpointError if it does not parse)."""
    try:
        return Config.from_dict(ckpt["config"])
    except Exception as err:
        raise CheckpointError(f"{path} holds a config this version cannot read ({type(err).__name__}: {err}); "
                              "it was written by another version of nanogpt_core") from err


def load_weights(model, state: dict, path: str | Path) -> None:
    """``model.load_state_dict(state)``, with a CheckpointError naming the first mismatch."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        raise CheckpointError(f"{path}: the saved weights do not fit this model ({lines[0] if lines else err})") from err


def _differences(saved: dict, now: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    out = []
    for key in [*saved, *(k for k in now if k not in saved)]:
        a, b = saved.get(key, "(absent)"), now.get(key, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out


def check_resume(ckpt: dict, cfg: Config, data_id: dict, path: str | Path, allow_longer_run: bool = False) -> None:
    """Refuse (CheckpointError) to resume ``ckpt`` as a run of ``cfg`` on the data ``data_id`` unless
    it is the same run: stage, scale, model shape and switches, optimizer, batch, schedule, loader,
    seed and data must agree. Only ``RESUME_MAY_CHANGE`` may differ, and ``steps`` may grow with
    ``allow_longer_run``. A checkpoint at or past the run's last step has nothing left to train."""
    version = (ckpt.get("format") or {}).get("version", 1)
    if version < CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {version}, written before Muon updated q, k and v apart "
                              f"and validation became run 1's (format {CHECKPOINT_FORMAT}): it can be evaluated and "
                              "sampled, not resumed; start a new run")
    saved = checkpoint_config(ckpt, path)
    step, saved_steps = int(ckpt["step"]), saved.train.steps
    diffs = []
    for name, a, b in _differences({"stage": saved.stage, "scale": saved.scale, "model": asdict(saved.model),
                                    "train": asdict(saved.train)},
                                   {"stage": cfg.stage, "scale": cfg.scale, "model": asdict(cfg.model),
                                    "train": asdict(cfg.train)}):
        field_name = name.rpartition(".")[2]
        if field_name not in (*RESUME_MAY_CHANGE, "steps"):  # steps: checked below
            diffs.append(f"{field_name} {a!r} -> {b!r}")
    saved_data = (ckpt.get("format") or {}).get("data")  # format 1 checkpoints did not record it
    if saved_data and data_id:
        diffs += [f"data {name} {a!r} -> {b!r}" for name, a, b in _differences(saved_data, data_id)
                  if name != "vocab_size" and not (name in ("train_docs", "val_docs") and "(absent)" in (a, b))]
    if diffs:
        shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        raise CheckpointError(f"{path} is a different run (checkpoint -> this run: {shown}); resume with the "
                              "checkpoint's settings and data, or start a new run without --resume")
    if step >= cfg.train.steps:
        finished = "a finished run" if step >= saved_steps else "a run"
        raise CheckpointError(
            f"{path} holds {finished} at step {step} of {saved_steps}: with --steps {cfg.train.steps} there is "
            f"nothing left to train. Its result is in the checkpoint (evaluate --checkpoint {path}); to train on, "
            f"pass --steps N > {step} with --allow-longer-run (the LR schedule then spans the new N)")
    if cfg.train.steps != saved_steps:
        if not allow_longer_run or cfg.train.steps < saved_steps:
            raise CheckpointError(
                f"{path} is a run of {saved_steps} steps (now at step {step}) and this run asks for "
                f"{cfg.train.steps}: the LR schedule would change mid-run. Resume with --steps {saved_steps}"
                + ("" if cfg.train.steps < saved_steps else ", or pass --allow-longer-run to extend it"))
