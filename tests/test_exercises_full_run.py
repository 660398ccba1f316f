"""The checks of chapter 09 fail on a stub, fail on plausible wrong answers, pass on the solution."""

import math
import os
import time

import pytest
import torch
import torch.distributed as dist

from nanogpt_core.classroom.checks import CheckFailed
from nanogpt_core.classroom.checks.full_run import (
    check_memory_estimate,
    check_tokens_and_steps,
    check_zero1_step,
)
from nanogpt_core.optim import route_parameters
from nanogpt_core.plan import memory_per_gpu


def stub(*args):
    raise NotImplementedError


# ---- tokens and steps ----------------------------------------------------------------------------


def steps_solution(n, ratio, batch):
    steps = int(ratio * n) // batch
    return steps * batch, steps


def steps_rounded_up(n, ratio, batch):  # a partial last step does not exist
    steps = math.ceil(ratio * n / batch)
    return steps * batch, steps


def steps_float(n, ratio, batch):  # tokens not rounded to whole steps
    return ratio * n, ratio * n / batch


def test_tokens_and_steps():
    with pytest.raises(CheckFailed, match="not implemented"):
        check_tokens_and_steps(stub)
    for wrong in (steps_rounded_up, steps_float):
        with pytest.raises(CheckFailed):
            check_tokens_and_steps(wrong)
    assert check_tokens_and_steps(steps_solution) is True


# ---- the memory estimate --------------------------------------------------------------------------


def memory(model, micro_batch, world_size, optimizer="muon", *, shard_optimizer=True, muon_bytes=4, shard_grads=False,
           params="total", logits=True):
    """The solution, with switches for the mistakes a student makes."""
    cfg = model.cfg
    P = model.num_params()[params]
    muon = sum(p.numel() for p in route_parameters(model)["muon"]) if optimizer == "muon" else 0
    tokens = micro_batch * cfg.seq_len
    parts = {
        "weights": 4 * P,
        "grads": 4 * P / (world_size if shard_grads else 1),
        "optimizer": (8 * (P - muon) + muon_bytes * muon) / (world_size if shard_optimizer else 1),
        "activations": tokens * (cfg.n_layer * cfg.n_embd * 30 + (cfg.vocab_size * 4 if logits else 0)),
    }
    parts["total"] = sum(parts.values())
    return {k: v / 1e9 for k, v in parts.items()}


MEMORY_WRONGS = {
    "optimizer state not sharded": lambda *a: memory(*a, shard_optimizer=False),
    "Muon keeps two moments like AdamW": lambda *a: memory(*a, muon_bytes=8),
    "gradients sharded too (ZeRO-2, not what the speedrun does)": lambda *a: memory(*a, shard_grads=True),
    "scaling parameters instead of all parameters": lambda *a: memory(*a, params="scaling"),
    "the logits forgotten": lambda *a: memory(*a, logits=False),
    "bytes instead of GB": lambda *a: {k: v * 1e9 for k, v in memory(*a).items()},
}


@pytest.mark.parametrize("mistake", list(MEMORY_WRONGS))
def test_memory_estimate_rejects(mistake):
    with pytest.raises(CheckFailed):
        check_memory_estimate(MEMORY_WRONGS[mistake])


def test_memory_estimate():
    with pytest.raises(CheckFailed, match="not implemented"):
        check_memory_estimate(stub)
    assert check_memory_estimate(memory) is True
    with pytest.raises(CheckFailed, match="write it yourself"):  # the package's own function is the answer
        check_memory_estimate(memory_per_gpu)


# ---- one ZeRO-1 step on two gloo processes -------------------------------------------------------


def _adamw_rows(p, g, m, v, step, lr, betas, eps, weight_decay):
    """torch's AdamW update on a slice (in place): decoupled decay, bias-corrected moments."""
    b1, b2 = betas
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    p.mul_(1 - lr * weight_decay)
    p.addcdiv_(m, (v / (1 - b2**step)).sqrt().add_(eps), value=-lr / (1 - b1**step))


@torch.no_grad()
def zero1_solution(params, state, step, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, *, divide=True,
                   gather=True):
    W, r = dist.get_world_size(), dist.get_rank()
    for i, p in enumerate(params):
        rows = p.shape[0] // W
        g = torch.empty_like(p[:rows])
        dist.reduce_scatter_tensor(g, p.grad.contiguous())
        if divide:
            g /= W
        mine = p[r * rows : (r + 1) * rows].clone()
        s = state.setdefault(i, {"exp_avg": torch.zeros_like(g), "exp_avg_sq": torch.zeros_like(g)})
        _adamw_rows(mine, g, s["exp_avg"], s["exp_avg_sq"], step, lr, betas, eps, weight_decay)
        if gather:
            dist.all_gather_into_tensor(p, mine)
        else:
            p[r * rows : (r + 1) * rows] = mine


def zero1_with_allreduce(params, state, step, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0):
    """Also right: all-reduce the whole gradient, keep the own rows (more traffic, the same ZeRO-1 state)."""
    W, r = dist.get_world_size(), dist.get_rank()
    with torch.no_grad():
        for i, p in enumerate(params):
            rows = p.shape[0] // W
            g = p.grad.clone()
            dist.all_reduce(g)
            g = g[r * rows : (r + 1) * rows] / W
            mine = p[r * rows : (r + 1) * rows].clone()
            s = state.setdefault(i, {"exp_avg": torch.zeros_like(g), "exp_avg_sq": torch.zeros_like(g)})
            _adamw_rows(mine, g, s["exp_avg"], s["exp_avg_sq"], step, lr, betas, eps, weight_decay)
            parts = [torch.empty_like(mine) for _ in range(W)]
            dist.all_gather(parts, mine)
            p.copy_(torch.cat(parts))


@torch.no_grad()
def plain_ddp(params, state, step, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0):
    """Data parallel without ZeRO: right parameters, but every rank keeps the moments of every row."""
    W = dist.get_world_size()
    for i, p in enumerate(params):
        g = p.grad.clone()
        dist.all_reduce(g)
        g /= W
        s = state.setdefault(i, {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)})
        _adamw_rows(p, g, s["exp_avg"], s["exp_avg_sq"], step, lr, betas, eps, weight_decay)


@torch.no_grad()
def local_only(params, state, step, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0):
    """No communication: each rank steps on its own half of the batch."""
    for i, p in enumerate(params):
        s = state.setdefault(i, {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)})
        _adamw_rows(p, p.grad, s["exp_avg"], s["exp_avg_sq"], step, lr, betas, eps, weight_decay)


def summed_not_averaged(*args, **kw):  # reduce-scatter sums: the gradient is W times too large
    zero1_solution(*args, **kw, divide=False)


def no_all_gather(*args, **kw):  # each rank updates its rows and never receives the others'
    zero1_solution(*args, **kw, gather=False)


@torch.no_grad()
def l2_not_decoupled(params, state, step, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0):
    """Adam with L2 regularisation (decay added to the gradient), not AdamW's decoupled decay."""
    W, r = dist.get_world_size(), dist.get_rank()
    for i, p in enumerate(params):
        rows = p.shape[0] // W
        g = torch.empty_like(p[:rows])
        dist.reduce_scatter_tensor(g, p.grad.contiguous())
        mine = p[r * rows : (r + 1) * rows].clone()
        g = g / W + weight_decay * mine
        s = state.setdefault(i, {"exp_avg": torch.zeros_like(g), "exp_avg_sq": torch.zeros_like(g)})
        _adamw_rows(mine, g, s["exp_avg"], s["exp_avg_sq"], step, lr, betas, eps, 0.0)
        dist.all_gather_into_tensor(p, mine)


def test_zero1_step_passes_the_solutions():
    t0 = time.monotonic()
    assert check_zero1_step(zero1_solution) is True
    assert time.monotonic() - t0 < 30, "the check should take a few seconds"
    assert check_zero1_step(zero1_with_allreduce) is True


def test_zero1_step_stub():
    with pytest.raises(CheckFailed, match="not implemented"):
        check_zero1_step(stub)


@pytest.mark.parametrize("wrong, message", [
    (plain_ddp, "only the moments of the rows it owns"),
    (local_only, "differ"),
    (summed_not_averaged, "mean over all ranks"),
    (no_all_gather, "own rows"),
    (l2_not_decoupled, "differs from one process's AdamW"),
])
def test_zero1_step_rejects(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check_zero1_step(wrong, seed=3)  # seed 3 draws a nonzero weight decay, so decoupled vs L2 differ


def test_zero1_step_fails_cleanly_on_a_hang():
    def one_rank_waits(params, state, step, *args):
        if dist.get_rank() == 0:
            dist.all_reduce(params[0].grad)
    t0 = time.monotonic()
    with pytest.raises(CheckFailed):
        check_zero1_step(one_rank_waits)
    assert time.monotonic() - t0 < 45
    assert not [c for c in __import__("multiprocessing").active_children()], "a check process was left running"
    assert os.getpid()  # (the parent survives)
