"""Checks for chapter 6 (the speedrun's block: RoPE, RMSNorm, value embeddings).

    check_rope(fn)                 fn(x, cos, sin) -> x rotated: x (..., T, D), cos and sin (T, D/2);
                                   channel i pairs with channel i + D/2 and the pair is rotated by
                                   the angle whose cos/sin are given: (a, b) -> (a cos + b sin,
                                   -a sin + b cos); reference: model.apply_rotary
    check_rms_norm(fn)             fn(x) -> x / sqrt(mean(x^2 over the last dim) + eps), with
                                   eps = torch.finfo(x.dtype).eps and no parameters;
                                   reference: model.rms_norm
    check_value_embedding_mix(fn)  fn(v, ve, gate_logits) -> v + 2 sigmoid(gate_logits) * ve, one
                                   gate per head: v and ve (B, T, H, D), gate_logits (B, T, H);
                                   reference: model.mix_value_embedding
"""

from __future__ import annotations

import random

import torch

from ...model import apply_rotary, mix_value_embedding, rms_norm, rotary_tables
from . import Case, check_function


def check_rope(student) -> bool:
    """Compare ``student(x, cos, sin)`` with the reference on real RoPE tables and random angles."""
    rng = random.Random()
    cases = []
    for B, H, T, D in [(1, 1, 4, 8), (2, 3, 16, 32)]:
        cos, sin = rotary_tables(T, D)
        cases.append(Case(f"x {(B, H, T, D)}, RoPE tables", (torch.randn(B, H, T, D), cos, sin)))
    T, D = rng.randint(3, 12), 2 * rng.randint(2, 8)
    angles = torch.rand(T, D // 2) * 6.3  # arbitrary angles: a check of the pairing, not of the table
    cases.append(Case(f"x {(T, D)} (no batch or head dims), random angles", (torch.randn(T, D), angles.cos(), angles.sin())))
    cases.append(Case("x in float64", (torch.randn(1, 2, 5, 6, dtype=torch.float64), *rotary_tables(5, 6))))
    return check_function(student, apply_rotary, cases, "RoPE")


def check_rms_norm(student) -> bool:
    """Compare ``student(x)`` with the reference; one case is so small that eps matters."""
    cases = [
        Case("x (4, 16)", (torch.randn(4, 16),)),
        Case("x (2, 5, 64) with mean 3 (RMSNorm does not subtract the mean)", (torch.randn(2, 5, 64) + 3,)),
        Case("x (3, 8) scaled by 1e-3 (here eps matters: use the dtype's eps)", (torch.randn(3, 8) * 1e-3,)),
        Case("x in float64", (torch.randn(2, 32, dtype=torch.float64),)),
    ]
    return check_function(student, rms_norm, cases, "RMSNorm", atol=1e-5, rtol=1e-4)


def check_value_embedding_mix(student) -> bool:
    """Compare ``student(v, ve, gate_logits)`` with the reference, including a zero (neutral) gate."""
    B, T, H, D = 2, 5, 3, 4
    cases = [
        Case("zero gate logits (every gate 1.0)", (torch.randn(B, T, H, D), torch.randn(B, T, H, D), torch.zeros(B, T, H))),
        Case("random gate logits", (torch.randn(B, T, H, D), torch.randn(B, T, H, D), 3 * torch.randn(B, T, H))),
        Case("one head per gate, 6 heads", (torch.randn(1, 7, 6, 8), torch.randn(1, 7, 6, 8), torch.randn(1, 7, 6))),
    ]
    return check_function(student, mix_value_embedding, cases, "value-embedding mix")
