"""Checks for chapter 09 (the full run): the planner's arithmetic and one data-parallel step.

    check_tokens_and_steps(fn)    fn(scaling_params, ratio, total_batch) -> (tokens, steps)
    check_memory_estimate(fn)     fn(model, micro_batch, world_size, optimizer) -> {"weights", "grads",
                                  "optimizer", "activations", "total"} in GB, against the planner's
                                  ``plan.memory_per_gpu`` on random configs of every stage (meta models)
    check_zero1_step(fn)          fn(params, state, step, lr, betas, eps, weight_decay): one ZeRO-1
                                  AdamW step, run in 2 gloo processes for several steps; after every
                                  step each rank's parameters must equal one process's AdamW on the
                                  whole batch, and each rank must hold only its rows of the moments
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import random
import shutil
import tempfile
import time
import warnings
from datetime import timedelta

import torch

from ...config import STAGES, stage_config
from ...optim import ShardedAdamW
from ...plan import fitting_micro_batch, make_plan, memory_per_gpu, meta_model
from .. import watch
from ..watch import answered_by
from . import Case, CheckFailed, call_student, check_function

# ---- Exercise 9.1: tokens and steps ----------------------------------------------------------------


def tokens_and_steps(scaling_params: int, ratio: float, total_batch: int) -> tuple[int, int]:
    """Reference: steps = floor(ratio * N / batch) whole optimizer steps; tokens = steps * batch."""
    steps = int(ratio * scaling_params) // total_batch
    return steps * total_batch, steps


def _ints(student):
    def wrapped(*args):
        got = student(*args)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise CheckFailed(f"tokens_and_steps: return a pair (tokens, steps), got {got!r:.60}")
        if not all(isinstance(v, int) for v in got):
            raise CheckFailed("tokens_and_steps: tokens and steps must be whole numbers (int): a run takes whole steps")
        return tuple(got)
    return wrapped


@answered_by(tokens_and_steps)
def check_tokens_and_steps(student) -> bool:
    """Compare ``student(scaling_params, ratio, total_batch)`` with the reference."""
    rng = random.Random()
    cases = [
        Case("nanochat run 1: 729.8M scaling params, ratio 12, 524,288 tokens/step", (729_813_552, 12, 524_288)),
        Case("Chinchilla's ratio 20 at GPT-2 small size", (124_000_000, 20, 524_288)),
        Case("a budget that is not a whole number of steps", (1_000_003, 8, 4096)),
    ]
    cases += [Case(f"random #{i}", (rng.randrange(10**6, 10**9), rng.choice([8, 10.5, 12, 20]), 2 ** rng.randrange(12, 20)))
              for i in range(3)]
    return check_function(_ints(student), tokens_and_steps, cases, "tokens_and_steps")


# ---- Exercise 9.2: the planner's memory estimate ---------------------------------------------------

MEMORY_PARTS = ("weights", "grads", "optimizer", "activations", "total")


def _random_model(rng: random.Random, stage: str):
    """A meta-device model of ``stage`` with random sizes (no memory is allocated)."""
    n_head = rng.choice([2, 4, 6, 8])
    head_dim = rng.choice([16, 32, 64])
    cfg = stage_config(stage, "toy", n_layer=rng.randrange(1, 13), n_head=n_head, n_embd=n_head * head_dim,
                       vocab_size=rng.randrange(500, 40_000), seq_len=rng.choice([64, 256, 1024, 2048]))
    return meta_model(cfg), cfg


@answered_by(memory_per_gpu, fitting_micro_batch, make_plan)
def check_memory_estimate(student) -> bool:
    """Compare ``student(model, micro_batch, world_size, optimizer)`` with ``plan.memory_per_gpu``, part by part."""
    rng = random.Random()
    cases = [("nanochat run 1 (d24, stage packing) on 8 GPUs, 16 rows", meta_model(stage_config("packing", "speedrun")),
              16, 8, "muon")]
    for i, stage in enumerate(rng.sample(list(STAGES), 5)):
        model, cfg = _random_model(rng, stage)
        cases.append((f"random #{i}: stage {stage}", model, rng.choice([1, 4, 16]), rng.choice([1, 2, 8]),
                      cfg.train.optimizer))
    model, _ = _random_model(rng, "value-embeddings")
    cases.append(("the value-embeddings model trained with AdamW alone", model, 8, 4, "adamw"))
    for name, model, micro, world, optimizer in cases:
        where = f"memory_estimate, case '{name}' (micro_batch={micro}, world_size={world}, optimizer={optimizer!r})"
        expected = memory_per_gpu(model, micro, world, optimizer)
        got = call_student(student, "memory_estimate", where, model, micro, world, optimizer)
        if not isinstance(got, dict) or set(got) != set(MEMORY_PARTS):
            keys = sorted(got) if isinstance(got, dict) else type(got).__name__
            raise CheckFailed(f"{where}: return a dict with exactly the keys {list(MEMORY_PARTS)}, got {keys}")
        for part in MEMORY_PARTS:
            value = got[part]
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise CheckFailed(f"{where}: '{part}' must be a number of GB (a float), got {type(value).__name__}")
            if abs(value - expected[part]) > 1e-9 * max(1.0, abs(expected[part])):
                hint = {"total": " (the sum of the four parts)",
                        "optimizer": " (which parameters keep how many fp32 buffers, and where do they live?)",
                        "grads": " (one fp32 gradient per parameter, on every rank)",
                        "weights": " (every parameter, embeddings included, in fp32)",
                        "activations": " (what backward keeps per token: the blocks and the logits)"}[part]
                raise CheckFailed(f"{where}: '{part}' is {value:.6g} GB, which is not the planner's estimate{hint}")
    print(f"✓ memory_estimate: all {len(cases)} models match the planner's estimate, part by part")
    return True


# ---- Exercise 9.3: one ZeRO-1 AdamW step on two gloo processes -------------------------------------

WORLD = 2
STEPS = 3
ROWS_PER_RANK = 4
SHAPES = ((8, 6), (4, 8), (4,))  # every first dimension divisible by WORLD: each rank owns half the rows
TIMEOUT = 40.0  # seconds for both processes together; a collective one rank never joins fails after 10 s


def _problem(seed: int):
    """Initial parameters, hyper-parameters and the global batches of one check run (the same on every rank)."""
    g = torch.Generator().manual_seed(seed)
    params = [(torch.randn(*s, generator=g) * 0.5) for s in SHAPES]
    batches = [(torch.randn(WORLD * ROWS_PER_RANK, SHAPES[0][1], generator=g),
                torch.randn(WORLD * ROWS_PER_RANK, SHAPES[1][0], generator=g)) for _ in range(STEPS)]
    rng = random.Random(seed)
    hyper = dict(lr=rng.choice([0.01, 0.03, 0.05]), betas=(rng.choice([0.8, 0.9]), rng.choice([0.95, 0.99])),
                 eps=1e-8, weight_decay=rng.choice([0.0, 0.1, 0.5]))
    return params, batches, hyper


def _loss(params, x, y):
    """A two-layer network's mean squared error; the mean over rows, as a training loss is."""
    w1, w2, b = params
    return ((torch.tanh(x @ w1.T) @ w2.T + b - y) ** 2).mean()


def _reference(seed: int):
    """One process, the whole batch, torch's AdamW: parameters and moments after every step."""
    init, batches, hyper = _problem(seed)
    params = [p.clone().requires_grad_() for p in init]
    opt = torch.optim.AdamW(params, foreach=False, **hyper)
    history = []
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        _loss(params, x, y).backward()
        opt.step()
        history.append(dict(params=[p.detach().clone() for p in params],
                            exp_avg=[opt.state[p]["exp_avg"].clone() for p in params],
                            exp_avg_sq=[opt.state[p]["exp_avg_sq"].clone() for p in params]))
    return history


def _snapshot_state(state):
    """The student's state, copied to plain tensors (anything unexpected is reported by the parent)."""
    if not isinstance(state, dict):
        return f"state must stay a dict, it became a {type(state).__name__}"
    out = {}
    for i in range(len(SHAPES)):
        entry = state.get(i)
        if not isinstance(entry, dict):
            out[i] = None
            continue
        out[i] = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else None) for k, v in entry.items()
                  if k in ("exp_avg", "exp_avg_sq")}
    return out


def _worker(rank: int, store_path: str, seed: int, student, conn) -> None:
    """One rank (a forked process): its half of every batch, the student's step, a snapshot after each step."""
    import torch.distributed as dist

    message = ("error", "the process ended without a result")
    quiet = os.open(os.devnull, os.O_WRONLY)  # gloo's C++ log lines too: nothing reaches the parent's output
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    try:
        torch.set_num_threads(1)
        warnings.simplefilter("ignore")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD,
                                    timeout=timedelta(seconds=10))
            dist.barrier()  # both ranks connected before the student's code runs
            init, batches, hyper = _problem(seed)
            params = [p.clone().requires_grad_() for p in init]
            state: dict = {}
            history = []
            mine = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
            for t, (x, y) in enumerate(batches, start=1):
                for p in params:
                    p.grad = None
                _loss(params, x[mine], y[mine]).backward()
                student(params, state, t, hyper["lr"], hyper["betas"], hyper["eps"], hyper["weight_decay"])
                history.append(dict(params=[p.detach().clone() for p in params], state=_snapshot_state(state)))
            refused = watch.refusals()  # this rank's watch (the parent's, forked with it)
            message = ("refused", refused[0]) if refused else ("ok", history)
            dist.barrier()  # neither rank leaves while the other may still talk to it
    except NotImplementedError:
        message = ("not implemented", "")
    except Exception as err:  # noqa: BLE001 (reported to the parent, which raises CheckFailed)
        message = ("error", f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"[:300])
    try:
        buffer = io.BytesIO()
        torch.save(message, buffer)
        conn.send_bytes(buffer.getvalue())
        conn.close()
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        os._exit(0)  # a forked child: skip the parent's exit handlers (a notebook kernel's, say)


def _loopback_works() -> bool:
    """Whether two local processes can talk over 127.0.0.1 (a sandbox with no network may lack even that)."""
    import socket

    try:
        with socket.socket() as server, socket.socket() as client:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            client.settimeout(2)
            client.connect(server.getsockname())
        return True
    except OSError:
        return False


def run_on_two_processes(student, seed: int, timeout: float = TIMEOUT) -> list:
    """Run ``student`` as ZeRO-1 step in WORLD forked gloo processes; each rank's history (or CheckFailed)."""
    if not _loopback_works():
        raise CheckFailed("zero1_adamw_step: the check could not run: its two gloo processes talk over the loopback "
                          "interface (127.0.0.1), which this machine or sandbox does not offer (not a fault of the "
                          "answer; a grader's sandbox must bring its own loopback up)")
    ctx = multiprocessing.get_context("fork")
    store = tempfile.mkdtemp(prefix="zero1-")
    procs, conns = [], []
    try:
        for rank in range(WORLD):
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker, args=(rank, os.path.join(store, "rendezvous"), seed, student, send),
                               daemon=True)
            proc.start()
            send.close()
            procs.append(proc)
            conns.append(receive)
        results, deadline = [], time.monotonic() + timeout
        for rank, conn in enumerate(conns):
            if not conn.poll(max(deadline - time.monotonic(), 0.0)):
                raise CheckFailed(f"zero1_adamw_step: rank {rank} did not finish within {timeout:g} s (a collective that "
                                  "one rank calls and the other does not waits forever)")
            try:
                results.append(torch.load(io.BytesIO(conn.recv_bytes()), weights_only=False))
            except EOFError:
                raise CheckFailed(f"zero1_adamw_step: rank {rank} died without a result") from None
        return results
    finally:
        for proc in procs:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in conns:
            conn.close()
        shutil.rmtree(store, ignore_errors=True)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@answered_by(ShardedAdamW, _reference)
def check_zero1_step(student, seed: int | None = None) -> bool:
    """Run ``student`` as a ZeRO-1 AdamW step on 2 gloo processes; compare with one process's AdamW, step by step.

    ``student(params, state, step, lr, betas, eps, weight_decay)`` runs on each rank, on its half of
    every batch, for a few steps; after each, every rank's parameters must equal one process's AdamW
    on the whole batch, and its ``state[i]`` must hold AdamW's moments for its own rows only."""
    seed = random.randrange(2**31) if seed is None else seed
    ranks = run_on_two_processes(student, seed)
    for rank, (status, payload) in enumerate(ranks):
        if status == "not implemented":
            raise CheckFailed("zero1_adamw_step: not implemented yet (the function still raises NotImplementedError)")
        if status == "refused":
            raise CheckFailed(f"zero1_adamw_step: on rank {rank}, {payload}")
        if status != "ok":
            raise CheckFailed(f"zero1_adamw_step: rank {rank} raised {payload}")
    reference = _reference(seed)
    for t, ref in enumerate(reference, start=1):
        for i, expected in enumerate(ref["params"]):
            shape = tuple(expected.shape)
            got = [ranks[r][1][t - 1]["params"][i] for r in range(WORLD)]
            for r in range(WORLD):
                if torch.allclose(got[r], expected, atol=1e-5, rtol=1e-4):
                    continue
                rows = shape[0] // WORLD
                own = slice(r * rows, (r + 1) * rows)
                if torch.allclose(got[r][own], expected[own], atol=1e-5, rtol=1e-4):
                    raise CheckFailed(f"zero1_adamw_step: after step {t} rank {r}'s own rows of parameter {i} {shape} "
                                      "are right but the others are not: each rank must end the step with every "
                                      "rank's updated rows")
                raise CheckFailed(f"zero1_adamw_step: after step {t}, rank {r}'s parameter {i} {shape} differs from one "
                                  "process's AdamW step on the whole batch (max abs error "
                                  f"{_max_err(got[r], expected):.3g})")
            if not torch.equal(got[0], got[1]):
                raise CheckFailed(f"zero1_adamw_step: after step {t} the two ranks hold different values of parameter "
                                  f"{i} {shape}: every rank must end the step with the same, whole parameter")
        for r in range(WORLD):
            state = ranks[r][1][t - 1]["state"]
            if isinstance(state, str):
                raise CheckFailed(f"zero1_adamw_step: rank {r}: {state}")
            for i, expected in enumerate(ref["params"]):
                rows = expected.shape[0] // WORLD
                own = slice(r * rows, (r + 1) * rows)
                entry = state.get(i)
                for key in ("exp_avg", "exp_avg_sq"):
                    if entry is None or entry.get(key) is None:
                        raise CheckFailed(f"zero1_adamw_step: after step {t}, rank {r}'s state[{i}] has no tensor "
                                          f"'{key}' (keep parameter i's moments in state[i]['exp_avg'] and "
                                          "state[i]['exp_avg_sq'])")
                    got, want = entry[key], ref[key][i][own]
                    if tuple(got.shape) == tuple(expected.shape):
                        raise CheckFailed(f"zero1_adamw_step: rank {r} keeps '{key}' of the whole parameter {i} "
                                          f"{tuple(expected.shape)}: under ZeRO-1 each rank keeps only the moments of "
                                          "the rows it owns")
                    if got.shape != want.shape:
                        raise CheckFailed(f"zero1_adamw_step: rank {r}'s state[{i}]['{key}'] has shape {tuple(got.shape)}, "
                                          f"expected the shape of its rows, {tuple(want.shape)}")
                    if not torch.allclose(got, want, atol=1e-6, rtol=1e-4):
                        raise CheckFailed(f"zero1_adamw_step: after step {t}, rank {r}'s state[{i}]['{key}'] differs from "
                                          "AdamW's moment for those rows on the whole batch (max abs error "
                                          f"{_max_err(got, want):.3g}): is the gradient the mean over all ranks?")
    print(f"✓ zero1_adamw_step: {WORLD} gloo processes x {STEPS} steps match one process's AdamW on the whole batch; "
          "each rank keeps only the moments of its own rows")
    return True
