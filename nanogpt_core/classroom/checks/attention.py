"""Checks for chapter 3 (fused attention and sliding windows).

    check_sliding_window_mask(fn)  fn(T, window) -> (T, T) bool, True where query i may attend key j
                                   (FA3's window_size=(window, 0): i - window <= j <= i);
                                   reference: attention.sliding_window_mask
    check_online_softmax(fn)       fn(q, k, v, block_size) -> (out, lse) for ONE query row:
                                   q (D,), k and v (T, D), keys visited in blocks of block_size;
                                   out = softmax(k q / sqrt(D)) v, lse = log sum_j exp(k_j . q / sqrt(D))
"""

from __future__ import annotations

import math
import random

import torch

from ...attention import sliding_window_mask
from . import Case, CheckFailed, check_function


def check_sliding_window_mask(student) -> bool:
    """Compare ``student(T, window)`` with the reference mask, including windows longer than T."""
    rng = random.Random()
    cases = [
        Case("T=8, window=3", (8, 3)),
        Case("T=8, window=0 (each token sees only itself)", (8, 0)),
        Case("T=6, window=5 (= T - 1: plain causal)", (6, 5)),
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


def online_softmax_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int):
    """The two-pass answer: all scores at once (block_size does not change the result)."""
    scores = k @ q / math.sqrt(q.numel())
    return scores.softmax(0) @ v, torch.logsumexp(scores, 0)


def check_online_softmax(student) -> bool:
    """Compare ``student(q, k, v, block_size)`` -> (out, lse) with the two-pass reference.

    Scores are scaled up so that the running maximum changes between blocks: a recurrence that
    forgets to rescale the running sum and output when the maximum grows fails here.
    """
    g = torch.Generator().manual_seed(random.randrange(2**31))
    cases = []
    for T, D, block in ((1, 4, 1), (8, 4, 8), (16, 8, 4), (37, 16, 5), (64, 8, 1), (50, 32, 64)):
        q = 4 * torch.randn(D, generator=g, dtype=torch.float64)
        k = torch.randn(T, D, generator=g, dtype=torch.float64)
        k = k + torch.linspace(0, 3, T, dtype=torch.float64)[:, None] * q / q.norm()  # rising scores
        v = torch.randn(T, D, generator=g, dtype=torch.float64)
        cases.append(Case(f"T={T}, D={D}, block_size={block}", (q, k, v, block)))
    return check_function(student, online_softmax_reference, cases, "online softmax", atol=1e-8, rtol=1e-6)
