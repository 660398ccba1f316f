"""The training loop used by every chapter and by the command line.

One step: for each of ``grad_accum`` micro-batches, forward, loss / grad_accum, backward;
then (across processes) average the gradients, clip, set the scheduled learning rate, and
take one optimizer step. Validation bits per byte is measured every ``eval_every`` steps;
eval time is excluded from the training wall time so runs compare by their training cost.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from .compile import compile_model, eval_model
from .config import Config, TrainConfig
from .data import TokenizedCorpus, TokenStreamLoader, toy_data
from .evaluate import evaluate
from .hardware import autocast_for, describe_hardware, pick_device, use_bf16
from .loaders import ConsecutiveLoader, DocumentLoader
from .model import GPT
from .optim import build_optimizer
from .schedules import lr_multiplier, set_lr
from .tokenizer import bos_id


@dataclass
class RunResult:
    """Everything a run measured, in a form that serializes to JSON."""

    stage: str
    scale: str
    config: dict
    hardware: str
    device: str
    torch_version: str
    world_size: int
    params: dict
    flops_per_token: int
    precision: str = "fp32"  # what the forward pass ran in: "fp32" or "bf16 autocast" (see hardware.use_bf16)
    steps: int = 0
    tokens: int = 0
    wall_seconds: float = 0.0  # training time only (evaluation and each process's first step excluded)
    tokens_per_second: float = 0.0  # over the timed steps
    compile_seconds: float = 0.0  # each process's first step: compilation and warm-up, not in wall_seconds
    step_seconds: list[float] = field(default_factory=list)  # wall time of every step, the first included
    losses: list[float] = field(default_factory=list)  # train loss at every step
    val: list[dict] = field(default_factory=list)  # {step, tokens, seconds, loss, bpb}
    final_val_loss: float | None = None
    final_val_bpb: float | None = None

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def from_json(cls, path: str | Path) -> "RunResult":
        return cls(**json.loads(Path(path).read_text()))

    def summary(self) -> str:
        return (
            f"{self.stage} @ {self.scale}: {self.steps} steps, {self.tokens:,} tokens in {self.wall_seconds:.1f} s "
            f"({self.tokens_per_second:,.0f} tok/s), final val {self.final_val_bpb:.4f} bpb [{self.hardware}]"
        )


# ---- processes -----------------------------------------------------------------------------


def init_distributed() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment; starts the process group if needed."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", 0)), world_size


class Progress:
    """tqdm in interactive use, plain periodic lines otherwise, nothing when quiet.

    SPEEDRUN_PROGRESS=bar|plain|off overrides the automatic choice.
    """

    def __init__(self, total: int, desc: str, enabled: bool = True):
        mode = os.environ.get("SPEEDRUN_PROGRESS") or ("bar" if sys.stderr.isatty() or _in_notebook() else "plain")
        self.mode = mode if enabled else "off"
        self.total, self.desc, self.bar = total, desc, None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False)

    def update(self, step: int, **info) -> None:
        text = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(text, refresh=False)
        elif self.mode == "plain" and (step % max(1, self.total // 10) == 0 or step == self.total):
            print(f"{self.desc} step {step}/{self.total} {text}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


# ---- checkpoints -----------------------------------------------------------------------------

# 1: config, model, optimizer, loader, result, step, world_size. 2: adds "format": {"version": 2,
# "data": data_identity(...)}, so a resume can check that it continues the same run on the same data.
CHECKPOINT_FORMAT = 2
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
    import hashlib

    tok = hashlib.sha256(enc._pat_str.encode())
    for token, rank in sorted(enc._mergeable_ranks.items(), key=lambda kv: kv[1]):
        tok.update(rank.to_bytes(4, "little") + token)
    tok.update(json.dumps(sorted(enc._special_tokens.items())).encode())
    return tok.hexdigest()[:16]


def data_identity(data: TokenizedCorpus, val_tokens: torch.Tensor | None = None) -> dict:
    """A cheap fingerprint of a run's data: the tokenizer's merges and specials, and the val tokens
    (plus the number of train documents where they are in memory). Two runs on the same shards and
    tokenizer agree, wherever the files are; another tokenizer or another val split does not."""
    import hashlib

    val = data.stream("val") if val_tokens is None else val_tokens
    ident = {"vocab_size": data.enc.n_vocab, "tokenizer": tokenizer_fingerprint(data.enc),
             "val_tokens": int(val.numel()),
             "val": hashlib.sha256(val[: 1 << 20].to(torch.int64).numpy().tobytes()).hexdigest()[:16]}
    if isinstance(data.train_docs, list):
        ident["train_docs"] = len(data.train_docs)
    return ident


def save_checkpoint(path: str | Path, model, optimizer, loader, step: int, cfg: Config, result: RunResult,
                    rank: int = 0, world_size: int = 1, data_id: dict | None = None) -> None:
    """Write a checkpoint atomically: to a temporary file first, then rename over the target.

    Every process calls it. With several processes, each one's optimizer state (sharded: each
    holds its own part) and loader position differ, so each writes them to ``rank_path(path, r)``;
    after a barrier, rank 0 writes ``path`` (model, config, result), which names the step.
    ``data_id``: the run's ``data_identity``, kept so that a resume can check it.
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
                  if name != "vocab_size" and not (name == "train_docs" and "(absent)" in (a, b))]
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


# ---- the loop ----------------------------------------------------------------------------------


def build_loader(cfg: Config, data: TokenizedCorpus, rank: int = 0, world_size: int = 1):
    """The training loader named by ``cfg.train.loader``."""
    t = cfg.train
    if t.loader == "stream":
        if not data.in_memory:  # shards streamed from disk (FineWeb-edu): consecutive rows, in order
            return ConsecutiveLoader(data.train_docs, t.batch_size, cfg.model.seq_len, t.seed, rank, world_size)
        return TokenStreamLoader(data.stream("train"), t.batch_size, cfg.model.seq_len, t.seed, rank, world_size)
    # BOS-aligned rows: greedy crop (nanochat's first version), or BestFit-Crop
    policy = "greedy_crop" if t.loader == "bos" else "bestfit"
    return DocumentLoader(data.train_docs, t.batch_size, cfg.model.seq_len, policy, seed=t.seed, rank=rank,
                          world_size=world_size, bos_id=bos_id(data.enc), pad_id=bos_id(data.enc))


def train_step(fwd, model, optimizer, batches, step: int, t: TrainConfig, autocast=contextlib.nullcontext,
               world_size: int = 1, self_synced=frozenset()) -> torch.Tensor:
    """One optimizer step of the recipe; returns the mean loss of its micro-batches (a 0-d tensor).

    For each of the ``t.grad_accum`` micro-batches (x, y) in ``batches``: forward under ``autocast``,
    loss L_i, backward of L_i / grad_accum, so the gradients sum to the gradient of the mean loss.
    Across processes the gradients are averaged (all-reduce, except parameters whose optimizer
    syncs them itself). Then: clip the global gradient norm to ``t.grad_clip`` (if set), set every
    group's learning rate to its base rate times ``lr_multiplier(step)``, step, zero the gradients.
    ``fwd`` is the model's forward (``model`` itself, or its compiled version).
    """
    loss_sum = None
    for x, y in batches:
        with autocast():
            loss = fwd(x, y)
        (loss / t.grad_accum).backward()
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    if world_size > 1:
        for p in model.parameters():
            if p.grad is not None and id(p) not in self_synced:
                dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)
        dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
    if t.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
    set_lr(optimizer, lr_multiplier(step, t.steps, t))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / t.grad_accum


def train(
    cfg: Config,
    data: TokenizedCorpus | None = None,
    *,
    progress: bool = True,
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 0,
    resume_from: str | Path | None = None,
    stop_after: int | None = None,
    log_path: str | Path | None = None,
    model_cls: type[GPT] = GPT,
    allow_longer_run: bool = False,
    stop_at_bpb: float | None = None,
) -> tuple[GPT, RunResult]:
    """Train ``cfg`` on ``data`` (the toy corpus by default). Returns the model and its RunResult.

    ``checkpoint_path``/``checkpoint_every`` write checkpoints during the run (and at its end);
    ``resume_from`` continues a run from one, after ``check_resume`` made sure it is the same run on
    the same data (``allow_longer_run``: it may have more steps than the checkpoint's). ``stop_after`` ends the run early after that many
    steps (the schedule still spans ``cfg.train.steps``), as a crash would. ``log_path`` appends
    one JSON line per step ({"kind": "step", ...}) and per evaluation ({"kind": "eval", ...}).
    A loss that is NaN or inf stops the run with an error naming the last good checkpoint.
    ``model_cls``: a GPT subclass for a variant outside the ladder (e.g. ``ablations_negative``).
    ``stop_at_bpb``: a finish line; the run ends at the first evaluation whose val bpb is at or below
    it (the schedule still spans ``cfg.train.steps``; ``final_val_bpb`` stays None).
    """
    cfg = cfg.validate()
    t = cfg.train
    rank, world_size = init_distributed()
    device = pick_device(t.device)
    data = data or toy_data(cfg.model.vocab_size)
    if data.enc.n_vocab != cfg.model.vocab_size:
        raise ValueError(f"the tokenizer has {data.enc.n_vocab} tokens but vocab_size={cfg.model.vocab_size}")
    val_tokens = data.stream("val")
    data_id = data_identity(data, val_tokens) if checkpoint_path or resume_from is not None else None
    if resume_from is not None:  # before anything is built: a checkpoint of another run is refused here
        ckpt, own = load_run_state(resume_from, rank, world_size, map_location=device)
        check_resume(ckpt, cfg, data_id, resume_from, allow_longer_run)

    torch.manual_seed(t.seed)
    model = model_cls(cfg.model).to(device)
    optimizer = build_optimizer(model, t)
    loader = build_loader(cfg, data, rank, world_size)
    bf16 = use_bf16(t.bf16, device)
    autocast = autocast_for(device, bf16)
    result = RunResult(
        stage=cfg.stage, scale=cfg.scale, config=cfg.to_dict(), hardware=describe_hardware(device),
        precision="bf16 autocast" if bf16 else "fp32",
        device=str(device), torch_version=str(torch.__version__), world_size=world_size,
        params=model.num_params(), flops_per_token=model.flops_per_token(),
    )
    start_step = 0
    if resume_from is not None:
        load_weights(model, ckpt["model"], resume_from)
        try:
            optimizer.load_state_dict(own["optimizer"])
            loader.load_state_dict(own["loader"])
            result = RunResult(**ckpt["result"])
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise CheckpointError(f"{resume_from}: its optimizer, loader or result state does not fit this run "
                                  f"({type(err).__name__}: {err}); start a new run without --resume") from err
        if cfg.train.steps != result.config["train"]["steps"]:  # extended (allow_longer_run)
            result.config = cfg.to_dict()
        start_step = ckpt["step"]
    fwd = compile_model(model) if t.compile else model
    tokens_per_step = t.batch_size * t.grad_accum * cfg.model.seq_len * world_size

    def run_eval(step: int) -> None:
        metrics = evaluate(eval_model(model, fwd, device), val_tokens, data.token_bytes, t.batch_size, t.eval_tokens, autocast)
        result.val.append({"step": step, "tokens": result.tokens, "seconds": result.wall_seconds, **metrics})
        write_log("eval", **result.val[-1])

    log = open(log_path, "a") if log_path and rank == 0 else None  # noqa: SIM115 (closed at the end)

    def write_log(kind: str, **record) -> None:
        if log is not None:
            log.write(json.dumps({"kind": kind, **record}) + "\n")
            log.flush()

    last_good = f"{resume_from} (step {start_step})" if resume_from is not None else None

    self_synced = {id(p) for p in getattr(optimizer, "self_synced_params", [])}  # distributed Muon syncs its own
    bar = Progress(t.steps - start_step, f"{cfg.stage}@{cfg.scale}", enabled=progress and rank == 0)
    last_step = min(t.steps, stop_after if stop_after is not None else t.steps)
    timed_tokens = result.tokens_per_second * result.wall_seconds  # earlier segments of a resumed run
    finished = False
    for step in range(start_step, last_step):
        due = (t.eval_every and step % t.eval_every == 0) or step in t.eval_steps
        if due and not any(v["step"] == step for v in result.val):
            run_eval(step)
            if stop_at_bpb is not None and result.val[-1]["bpb"] <= stop_at_bpb:
                finished = True
                break
        t0 = time.perf_counter()
        batches = ((x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                   for x, y in (loader.next_batch() for _ in range(t.grad_accum)))
        loss_value = train_step(fwd, model, optimizer, batches, step, t, autocast, world_size, self_synced).item()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result.step_seconds.append(time.perf_counter() - t0)
        if step == start_step:  # compilation and warm-up, reported apart so runs compare by steady speed
            result.compile_seconds += result.step_seconds[-1]
        else:
            result.wall_seconds += result.step_seconds[-1]
            timed_tokens += tokens_per_step
        result.steps, result.tokens = step + 1, result.tokens + tokens_per_step
        result.losses.append(loss_value)
        if not math.isfinite(loss_value):
            if log is not None:
                log.close()
            raise FloatingPointError(
                f"the loss became {loss_value} at step {step + 1}; training stopped. Last good checkpoint: "
                + (last_good or "none (checkpoint with --checkpoint PATH --checkpoint-every N)")
                + ". Resume from it with a lower learning rate, or look for bad data in this step's batch."
            )
        write_log("step", step=step + 1, loss=loss_value, lr=lr_multiplier(step, t.steps, t), tokens=result.tokens,
                  seconds=round(result.wall_seconds, 4))
        bar.update(step + 1, loss=loss_value)
        if checkpoint_path and checkpoint_every and (step + 1) % checkpoint_every == 0:
            save_checkpoint(checkpoint_path, model, optimizer, loader, step + 1, cfg, result, rank, world_size, data_id)
            last_good = f"{checkpoint_path} (step {step + 1})"
    bar.close()
    if last_step == t.steps and not finished:
        if not result.val or result.val[-1]["step"] != t.steps:
            run_eval(t.steps)
        result.final_val_loss, result.final_val_bpb = result.val[-1]["loss"], result.val[-1]["bpb"]
    result.tokens_per_second = timed_tokens / max(result.wall_seconds, 1e-9)
    if log is not None:
        log.close()
    if checkpoint_path:
        save_checkpoint(checkpoint_path, model, optimizer, loader, result.steps, cfg, result, rank, world_size, data_id)
    return model, result
