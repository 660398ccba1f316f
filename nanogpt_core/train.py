"""The training loop used by every chapter and by the command line.

One step: for each of ``grad_accum`` micro-batches, forward, loss / grad_accum, backward;
then (across processes) average the gradients, clip, set the scheduled learning rate, Muon
momentum and Muon weight decay, and take one optimizer step. Validation bits per byte (run 1's,
``evaluate.py``) is measured every ``eval_every`` steps; eval time is excluded from the training
wall time so runs compare by their training cost. Checkpoints and the checks that a resume
continues the same run are in ``checkpoint.py``.
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
from typing import NamedTuple

import torch
import torch.distributed as dist

from .checkpoint import CheckpointError, check_resume, data_identity, load_run_state, load_weights, save_checkpoint
from .compile import compile_model, eval_model
from .config import Config, TrainConfig
from .data import TokenizedCorpus, TokenStreamLoader, toy_data
from .evaluate import evaluate, val_batches
from .hardware import autocast_for, describe_hardware, pick_device, use_bf16
from .loaders import ConsecutiveLoader, DocumentLoader
from .model import GPT
from .optim import build_optimizer
from .schedules import apply_schedules
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

    def summary(self) -> str:
        return (
            f"{self.stage} @ {self.scale}: {self.steps} steps, {self.tokens:,} tokens in {self.wall_seconds:.1f} s "
            f"({self.tokens_per_second:,.0f} tok/s), final val {self.final_val_bpb:.4f} bpb [{self.hardware}]"
        )


# ---- processes -----------------------------------------------------------------------------


@contextlib.contextmanager
def process_group(device: torch.device):
    """This process's place in torchrun's run, as (rank, world_size), for the ``with`` block.

    With several processes and no group started yet: bind this process to its GPU
    (``torch.cuda.set_device``, before anything touches CUDA, so that collectives and the current
    device are its own, not GPU 0), start the group (NCCL with ``device_id``; gloo on CPUs), and
    destroy it when the block ends. A group started by the caller (a test, a notebook) is used
    and left running.
    """
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    start = world_size > 1 and not dist.is_initialized()
    if start and device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device)
    elif start:
        dist.init_process_group(backend="gloo")
    try:
        yield int(os.environ.get("RANK", 0)), world_size
    finally:
        if start:
            dist.destroy_process_group()


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


class StepResult(NamedTuple):
    """What one optimizer step reports: the mean loss of its micro-batches (0-d tensor), the
    global gradient norm before clipping (0-d tensor; None where the step does not clip), and the
    schedules it ran at (``schedules.apply_schedules``'s dict)."""

    loss: torch.Tensor
    grad_norm: torch.Tensor | None
    schedules: dict


def train_step(fwd, model, optimizer, batches, step: int, t: TrainConfig, autocast=contextlib.nullcontext,
               world_size: int = 1, self_synced=frozenset()) -> StepResult:
    """One optimizer step of the recipe.

    For each of the ``t.grad_accum`` micro-batches (x, y) in ``batches``: forward under ``autocast``,
    loss L_i, backward of L_i / grad_accum, so the gradients sum to the gradient of the mean loss.
    Across processes the gradients are averaged (all-reduce, except parameters whose optimizer
    syncs them itself). Then: clip the global gradient norm to ``t.grad_clip`` (if set), set this
    step's learning rates, Muon momentum and weight decay (``apply_schedules``), step, zero the gradients.
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
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip) if t.grad_clip else None
    schedules = apply_schedules(optimizer, step, t)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_sum / t.grad_accum, grad_norm, schedules)


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
    the same data (``allow_longer_run``: it may have more steps than the checkpoint's; every schedule
    then spans the new number). ``stop_after`` ends the run early after that many steps (the
    schedules still span ``cfg.train.steps``), as a crash would. ``log_path`` appends one JSON line per step ({"kind": "step", ...}) and per evaluation ({"kind": "eval", ...}).
    A loss that is NaN or inf stops the run with an error naming the last good checkpoint.
    ``model_cls``: a GPT subclass for a variant outside the ladder (e.g. ``ablations_negative``).
    ``stop_at_bpb``: a finish line; the run ends at the first evaluation whose val bpb is at or below
    it (the schedule still spans ``cfg.train.steps``; ``final_val_bpb`` stays None).
    """
    cfg = cfg.validate()
    t = cfg.train
    device = pick_device(t.device)
    with process_group(device) as (rank, world_size):
        data = data or toy_data(cfg.model.vocab_size)
        if data.enc.n_vocab != cfg.model.vocab_size:
            raise ValueError(f"the tokenizer has {data.enc.n_vocab} tokens but vocab_size={cfg.model.vocab_size}")
        data_id = data_identity(data) if checkpoint_path or resume_from is not None else None
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
            batches = val_batches(data, t.batch_size, cfg.model.seq_len, t.eval_tokens, rank, world_size)
            metrics = evaluate(eval_model(model, fwd, device), batches, data.token_bytes, autocast)
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
            done = train_step(fwd, model, optimizer, batches, step, t, autocast, world_size, self_synced)
            loss_value = done.loss.item()
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
            write_log("step", step=step + 1, loss=loss_value, **done.schedules, tokens=result.tokens,
                      seconds=round(result.wall_seconds, 4))
            bar.update(step + 1, loss=loss_value)
            if checkpoint_path and checkpoint_every and (step + 1) % checkpoint_every == 0:
                save_checkpoint(checkpoint_path, model, optimizer, loader, step + 1, cfg, result, rank, world_size,
                                data_id)
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
            save_checkpoint(checkpoint_path, model, optimizer, loader, result.steps, cfg, result, rank, world_size,
                            data_id)
        return model, result
