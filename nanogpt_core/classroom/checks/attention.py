"""Checks for chapter 3 (fused attention and sliding windows).

    check_online_softmax_update(fn)  fn(state, scores_block, v_block) -> new state, one step of the
                                     online softmax for R query rows; state = (m, l, acc): the running
                                     max (R,), the running denominator sum_j exp(s_j - m) (R,) and the
                                     running weighted sum sum_j exp(s_j - m) v_j (R, D) over the keys seen
                                     so far; scores_block (R, B), v_block (B, D). The check streams the keys
                                     in random blocks and compares the state after every block with the
                                     two-pass state of the prefix seen so far, then acc / l and m + log l
                                     with the two-pass softmax output and log-sum-exp.
    check_sliding_window_mask(fn)    fn(T, window) -> (T, T) bool, True where query i may attend key j
                                     (FA3's window_size=(window, 0): i - window <= j <= i);
                                     reference: attention.sliding_window_mask
"""

from __future__ import annotations

import random

import torch

from ...attention import cached_mask, sliding_window_mask
from ..watch import answered_by
from . import Case, CheckFailed, call_student, check_function, compare_values


@answered_by(sliding_window_mask, cached_mask)
def check_sliding_window_mask(student) -> bool:
    """Compare ``student(T, window)`` with the reference mask, including windows longer than T."""
    rng = random.Random()
    cases = [
        Case("T=8, window=3", (8, 3)),
        Case("T=8, window=1 (the query and the key just before it)", (8, 1)),
        Case("T=8, window=0 (each token sees only itself)", (8, 0)),
        Case("T=6, window=5 (= T - 1: plain causal)", (6, 5)),
        Case("T=6, window=6 (= T)", (6, 6)),
        Case("T=5, window=12 (window longer than the sequence)", (5, 12)),
        Case("T=1, window=1", (1, 1)),
    ]
    for _ in range(3):
        T = rng.randint(2, 40)
        cases.append(Case(f"random T={T}", (T, rng.randint(1, T))))

    def reference(T, window):
        return sliding_window_mask(T, window)

    def as_bool(T, window):
        got = student(T, window)
        if isinstance(got, torch.Tensor) and got.dtype != torch.bool and got.shape == (T, T):
            raise CheckFailed(
                f"sliding-window mask, case T={T}, window={window}: dtype {got.dtype}; return a bool tensor "
                "(True = may attend), e.g. with comparisons of index tensors"
            )
        return got

    return check_function(as_bool, reference, cases, "sliding-window mask")


# ---- the online softmax, checked as a process ---------------------------------------------------


def initial_state(rows: int, dim: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The state before any key: m = -inf, l = 0, acc = 0."""
    return (torch.full((rows,), float("-inf"), dtype=dtype), torch.zeros(rows, dtype=dtype),
            torch.zeros(rows, dim, dtype=dtype))


def prefix_state(scores: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two-pass answer for the keys seen so far: (max, sum of exp(s - max), sum of exp(s - max) v)."""
    m = scores.max(dim=-1).values
    p = torch.exp(scores - m[:, None])
    return m, p.sum(dim=-1), p @ v


def _blocks(T: int, rng: random.Random, kind: str) -> list[int]:
    """Block sizes that add up to T: one block, all size 1, or random sizes with at least one 1."""
    if kind == "one block":
        return [T]
    if kind == "size 1":
        return [1] * T
    sizes = []
    while sum(sizes) < T:
        sizes.append(min(rng.randint(1, 7), T - sum(sizes)))
    if 1 not in sizes and T > 1:
        sizes[rng.randrange(len(sizes))] -= 1
        sizes.append(1)
    return [s for s in sizes if s > 0]


def _online_cases(g: torch.Generator, rng: random.Random) -> list[tuple[str, torch.Tensor, torch.Tensor, list[int]]]:
    """(description, scores (R, T), v (T, D), block sizes) in float64, with scores chosen so that
    the running maximum changes between blocks and exp(s) alone would overflow or underflow."""
    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    cases = []
    R, T, D = 3, 12, 4
    cases.append(("moderate scores (std 1), random blocks", randn(R, T), randn(T, D), _blocks(T, rng, "random")))
    R, T, D = 2, 9, 5
    rising = torch.linspace(-20.0, 900.0, T, dtype=torch.float64) + randn(R, T)
    cases.append(("scores rising to 900 (the max grows in every block), blocks of size 1", rising, randn(T, D),
                  _blocks(T, rng, "size 1")))
    R, T, D = 4, 23, 8
    cases.append(("scores of size ~500 in random order, random blocks", 500 * randn(R, T), randn(T, D),
                  _blocks(T, rng, "random")))
    R, T, D = 2, 15, 3
    falling = torch.linspace(40.0, -60.0, T, dtype=torch.float64) + randn(R, T)
    cases.append(("falling scores (the max is in the first block), random blocks", falling, randn(T, D),
                  _blocks(T, rng, "random")))
    R, T, D = 3, 17, 6
    cases.append(("scores near -1000 (exp(s) alone underflows to 0), random blocks", -1000 + 30 * randn(R, T),
                  randn(T, D), _blocks(T, rng, "random")))
    R = T = 10
    D = 4
    causal = (200 * randn(R, T)).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    cases.append(("causal rows: some scores are -inf (masked keys), random blocks", causal, randn(T, D),
                  _blocks(T, rng, "random")))
    R, T, D = 1, 6, 16
    cases.append(("one query row, the whole row in one block", 50 * randn(R, T), randn(T, D), _blocks(T, rng, "one block")))
    return cases


def _as_state(got, where: str, rows: int, dim: int):
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        n = len(got) if isinstance(got, (tuple, list)) else type(got).__name__
        raise CheckFailed(f"{where}: the update must return the new state (m, l, acc), a tuple of 3 tensors; got {n}"
                          + (" items" if isinstance(n, int) else ""))
    for name, t, shape in zip(("m", "l", "acc"), got, ((rows,), (rows,), (rows, dim))):
        if not isinstance(t, torch.Tensor):
            raise CheckFailed(f"{where}: {name} must be a tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise CheckFailed(f"{where}: {name} has shape {tuple(t.shape)}, expected {shape} "
                              "(the state's size must not grow with the number of keys seen)")
    return tuple(got)


_MEANING = {
    "m": "the largest score seen so far, per row",
    "l": "sum over every key seen so far of exp(s_j - m), with m the current running max",
    "acc": "sum over every key seen so far of exp(s_j - m) v_j, with m the current running max",
}


@answered_by(prefix_state)
def check_online_softmax_update(student) -> bool:
    """Stream keys in random blocks through ``student(state, scores_block, v_block)``; check the state after each block.

    After every block the state must equal the two-pass answer over the prefix of keys seen so
    far (``prefix_state``); at the end, acc / l must be the softmax-weighted sum of the values
    and m + log l the log-sum-exp of the scores.
    """
    rng = random.Random()
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    tol = dict(atol=1e-9, rtol=1e-7)
    cases = _online_cases(g, rng)
    for name, scores, v, sizes in cases:
        R, D = scores.size(0), v.size(1)
        state = initial_state(R, D)
        start = 0
        for b, size in enumerate(sizes, 1):
            end = start + size
            where = f"online softmax, case '{name}', after block {b} of {len(sizes)} (keys {start}..{end - 1})"
            got = call_student(student, "online softmax", where, tuple(t.clone() for t in state),
                               scores[:, start:end].clone(), v[start:end].clone())
            state = _as_state(got, where, R, D)
            expected = prefix_state(scores[:, :end], v[:end])
            for label, got_t, exp_t in zip(("m", "l", "acc"), state, expected):
                try:
                    compare_values(got_t, exp_t, f"{where}, {label}", **tol)
                except CheckFailed as err:
                    raise CheckFailed(f"{err}; {label} should be {_MEANING[label]}") from None
            start = end
        m, l, acc = state
        p = scores.softmax(dim=-1)
        compare_values(acc / l[:, None], p @ v, f"online softmax, case '{name}', final output acc / l", **tol)
        compare_values(m + torch.log(l), torch.logsumexp(scores, dim=-1),
                       f"online softmax, case '{name}', final log-sum-exp m + log l", **tol)
    blocks = sum(len(c[3]) for c in cases)
    print(f"✓ online softmax: the state matches the two-pass prefix after each of {blocks} blocks "
          f"in {len(cases)} streams, and the final output and log-sum-exp match")
    return True
