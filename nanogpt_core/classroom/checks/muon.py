"""Checks for chapter 5 (Muon).

    check_newton_schulz_step(fn)     fn(X, a, b, c) -> a X + (b A + c A^2) X with A = X X^T (X wide or square,
                                     a matrix or a stack (..., m, n) with m <= n)
    check_muon_update(fn)            fn(W, G, buf, lr, beta) -> (W_new, buf_new): momentum, Nesterov,
                                     orthogonalize (use nanogpt_core.muon.orthogonalize), shape factor
    check_cautious_weight_decay(fn)  fn(W, u, lr, wd) -> W - lr (u + wd * 1[u * W >= 0] * W)
"""

from __future__ import annotations

import math
import random

import torch

from ...muon import cautious_weight_decay, newton_schulz_step, orthogonalize
from . import Case, check_function


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(random.randrange(2**31))


def check_newton_schulz_step(student) -> bool:
    """Compare ``student(X, a, b, c)`` with one quintic step on random wide, square and stacked X."""
    g = _gen()
    cases = []
    for shape in ((4, 4), (3, 10), (16, 40), (2, 5, 8)):
        X = torch.randn(*shape, generator=g)
        X = X / X.norm(dim=(-2, -1), keepdim=True)
        a, b, c = (round(random.uniform(lo, hi), 3) for lo, hi in ((1, 9), (-23, -1), (0.3, 16)))
        cases.append(Case(f"X of shape {shape}, (a, b, c) = {(a, b, c)}", (X, a, b, c)))
    return check_function(student, newton_schulz_step, cases, "Newton-Schulz step", atol=1e-4, rtol=1e-4)


def muon_update_reference(W, G, buf, lr, beta):
    """One Muon step for one matrix, without NorMuon and weight decay (the exercise's scope)."""
    buf = beta * buf + (1 - beta) * G
    nesterov = (1 - beta) * G + beta * buf
    O = orthogonalize(nesterov)
    rows, cols = W.shape
    return W - lr * math.sqrt(max(1.0, rows / cols)) * O, buf


def check_muon_update(student) -> bool:
    """Compare ``student(W, G, buf, lr, beta)`` -> (W_new, buf_new) with the reference."""
    g = _gen()
    cases = []
    for shape in ((8, 8), (6, 20), (24, 6)):
        W, G, buf = (torch.randn(*shape, generator=g) for _ in range(3))
        lr, beta = round(random.uniform(0.01, 0.05), 4), round(random.uniform(0.8, 0.95), 3)
        cases.append(Case(f"W of shape {shape}, lr={lr}, beta={beta}", (W, G, buf, lr, beta)))
    return check_function(student, muon_update_reference, cases, "Muon update", atol=1e-4, rtol=1e-4)


def check_cautious_weight_decay(student) -> bool:
    """Compare ``student(W, u, lr, wd)`` with the reference on random weights and updates."""
    g = _gen()
    cases = []
    for shape in ((5, 5), (7, 3), (2, 4, 6)):
        W, u = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
        lr, wd = round(random.uniform(0.01, 0.1), 3), round(random.uniform(0.1, 2.0), 2)
        cases.append(Case(f"W of shape {shape}, lr={lr}, wd={wd}", (W, u, lr, wd)))
    return check_function(student, cautious_weight_decay, cases, "cautious weight decay", atol=1e-6, rtol=1e-5)
