"""Checks for chapters 09 (the full run) and 10 (what did not work): the planner's arithmetic.

    check_tokens_and_steps(fn)     fn(scaling_params, ratio, total_batch) -> (tokens, steps)
    check_optimizer_state(fn)      fn(adam_params, muon_params, world_size) -> bytes per GPU
    check_annual_factor(fn)        fn(start_dollars, end_dollars, years) -> yearly cost factor r
"""

from __future__ import annotations

import random

from . import Case, CheckFailed, check_function


def tokens_and_steps(scaling_params: int, ratio: float, total_batch: int) -> tuple[int, int]:
    """Reference: steps = floor(ratio * N / batch) whole optimizer steps; tokens = steps * batch."""
    steps = int(ratio * scaling_params) // total_batch
    return steps * total_batch, steps


def optimizer_state_bytes(adam_params: int, muon_params: int, world_size: int) -> float:
    """Reference: fp32 AdamW keeps m and v (8 bytes/param), Muon one momentum (4); sharded over the ranks."""
    return (8 * adam_params + 4 * muon_params) / world_size


def annual_factor(start_dollars: float, end_dollars: float, years: float) -> float:
    """Reference: the constant r with start * r^years = end."""
    return (end_dollars / start_dollars) ** (1 / years)


def _ints(student):
    def wrapped(*args):
        got = student(*args)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise CheckFailed(f"tokens_and_steps: return a pair (tokens, steps), got {got!r:.60}")
        if not all(isinstance(v, int) for v in got):
            raise CheckFailed("tokens_and_steps: tokens and steps must be whole numbers (int): a run takes whole steps")
        return tuple(got)
    return wrapped


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


def check_optimizer_state(student) -> bool:
    """Compare ``student(adam_params, muon_params, world_size)`` (bytes per GPU) with the reference."""
    rng = random.Random()
    cases = [
        Case("AdamW only, one GPU", (1000, 0, 1)),
        Case("Muon only, one GPU", (0, 1000, 1)),
        Case("the speedrun's split on 8 GPUs", (704_311_408, 679_813_568, 8)),
    ]
    cases += [Case(f"random #{i}", (rng.randrange(10**8), rng.randrange(10**8), rng.choice([1, 2, 8, 16]))) for i in range(3)]
    return check_function(lambda *a: float(student(*a)), optimizer_state_bytes, cases, "optimizer_state_bytes",
                          atol=0.5, rtol=1e-9)


def check_annual_factor(student) -> bool:
    """Compare ``student(start_dollars, end_dollars, years)`` with the reference."""
    rng = random.Random()
    cases = [
        Case("$43,000 (2019) -> $73 (2026)", (43_000.0, 73.0, 7)),
        Case("halving every year", (100.0, 12.5, 3)),
        Case("costs that rise", (10.0, 40.0, 2)),
    ]
    cases += [Case(f"random #{i}", (rng.uniform(1e3, 1e5), rng.uniform(1, 1e3), rng.randrange(1, 12))) for i in range(3)]
    return check_function(lambda *a: float(student(*a)), annual_factor, cases, "annual_factor", atol=1e-9, rtol=1e-7)
