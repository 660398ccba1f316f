"""Checks for chapter 6 (the speedrun's block: RoPE, QK-norm, the value-embedding gate).

    check_rope(fn)                  fn(x, positions, base) -> x rotated by position: x (..., T, D),
                                    positions (T,) integer positions (any order, any values),
                                    base the RoPE base; reference: model.rotary_tables at those
                                    positions, then model.apply_rotary
    check_qk_norm_logits(fn)        fn(q, k) -> the attention logits (..., T, T) of the modern block:
                                    q and k RMS-normalized per head (model.rms_norm), then the
                                    scaled dot product of attention.naive_attention
    check_value_embedding_gate(fn)  fn(x, v, ve, gate_weight) -> the values after the value
                                    embedding is mixed in: the gate logits read from x as
                                    CausalSelfAttention does (its first gate_weight.shape[1]
                                    channels), then model.mix_value_embedding
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from ...model import apply_rotary, mix_value_embedding, rms_norm, rotary_tables
from ..watch import answered_by
from . import Case, check_function


# ---- the references, written with the package's own functions ----------------------------------------


def rope_reference(x: torch.Tensor, positions: torch.Tensor, base: float = 10_000.0) -> torch.Tensor:
    """The package's RoPE at arbitrary positions: its tables, read at ``positions``, then ``apply_rotary``."""
    cos, sin = rotary_tables(int(positions.max()) + 1, x.size(-1), base)
    return apply_rotary(x, cos[positions], sin[positions])


def qk_norm_logits_reference(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The modern block's attention logits: ``rms_norm`` of q and k per head (as in
    ``CausalSelfAttention.forward``), then the scaled dot product of ``attention.naive_attention``."""
    q, k = rms_norm(q), rms_norm(k)
    return (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))


def value_embedding_gate_reference(x, v, ve, gate_weight):
    """``CausalSelfAttention``'s value-embedding path: gate logits from the first channels of x, then the mix."""
    return mix_value_embedding(v, ve, F.linear(x[..., : gate_weight.size(1)], gate_weight))


# ---- the checks -----------------------------------------------------------------------------------------


@answered_by(rotary_tables, apply_rotary, rope_reference)
def check_rope(student) -> bool:
    """Compare ``student(x, positions, base)`` with the package's RoPE on fresh inputs and positions."""
    rng = random.Random()
    T, D = rng.randint(5, 12), 2 * rng.randint(4, 8)
    cases = [
        Case("x (2, 3, 16, 32), positions 0..15, base 10000 (as in the model)",
             (torch.randn(2, 3, 16, 32), torch.arange(16), 10_000.0)),
        Case("a single token at position 0", (torch.randn(1, 2, 1, 8), torch.tensor([0]), 10_000.0)),
        Case(f"x {(T, D)}, only odd positions", (torch.randn(T, D), torch.arange(1, 2 * T, 2), 10_000.0)),
        Case(f"x {(T, D)}, only even positions", (torch.randn(T, D), torch.arange(0, 2 * T, 2), 10_000.0)),
        Case("x (1, 1, 6, 16), positions in shuffled order", (torch.randn(1, 1, 6, 16), torch.randperm(6), 10_000.0)),
        Case("x (2, 7, 16), positions 90..96, base 1024",
             (torch.randn(2, 7, 16), torch.arange(90, 97), 1024.0)),
        Case("x in float64, positions 0..4 (the result keeps x's dtype)",
             (torch.randn(1, 2, 5, 6, dtype=torch.float64), torch.arange(5), 10_000.0)),
    ]
    return check_function(student, rope_reference, cases, "RoPE", atol=1e-4, rtol=1e-4)


@answered_by(qk_norm_logits_reference)
def check_qk_norm_logits(student) -> bool:
    """Compare ``student(q, k)`` with the modern block's logits, including inputs where eps matters."""
    q, k = torch.randn(2, 3, 8, 16), torch.randn(2, 3, 8, 16)
    dead = torch.randn(1, 2, 6, 8)
    dead[0, 1, 2] = 0.0  # one key of one head is exactly zero
    cases = [
        Case("q, k (2, 3, 8, 16)", (q, k)),
        Case("the same q, k scaled by 1000 (the logits of the modern block do not grow)", (1000 * q, 1000 * k)),
        Case("q, k (1, 2, 6, 8) with mean 3 (the norm does not subtract the mean)",
             (torch.randn(1, 2, 6, 8) + 3, torch.randn(1, 2, 6, 8) + 3)),
        Case("one key is exactly zero", (torch.randn(1, 2, 6, 8), dead)),
        Case("q, k (1, 4, 5, 32) scaled by 1e-4 (here eps matters: use the dtype's eps)",
             (1e-4 * torch.randn(1, 4, 5, 32), 1e-4 * torch.randn(1, 4, 5, 32))),
        Case("heads of very different scales: (1, 2, 5, 8), head 1 x 50",
             (torch.randn(1, 2, 5, 8) * torch.tensor([1.0, 50.0]).view(1, 2, 1, 1), torch.randn(1, 2, 5, 8))),
        Case("q, k in float64", (torch.randn(2, 2, 4, 8, dtype=torch.float64), torch.randn(2, 2, 4, 8, dtype=torch.float64))),
    ]
    return check_function(student, qk_norm_logits_reference, cases, "QK-norm logits", atol=1e-4, rtol=1e-4)


@answered_by(mix_value_embedding, value_embedding_gate_reference)
def check_value_embedding_gate(student) -> bool:
    """Compare ``student(x, v, ve, gate_weight)`` with the package's gated mix, including a zero gate."""
    def inputs(B, T, C, H, D, k, weight_scale=1.0, dtype=torch.float32):
        x = torch.randn(B, T, C, dtype=dtype)
        if C > k:  # the channels the gate must not read get large values, so reading them shows
            x[..., k:] *= 30
        return (x, torch.randn(B, T, H, D, dtype=dtype), torch.randn(B, T, H, D, dtype=dtype),
                weight_scale * torch.randn(H, k, dtype=dtype) / math.sqrt(k))

    zero = inputs(2, 5, 64, 4, 16, 32)
    zero = (*zero[:3], torch.zeros_like(zero[3]))
    cases = [
        Case("gate weights all zero (the gates at their starting value)", zero),
        Case("x (2, 5, 64), 4 heads of 16, gate reading 32 channels", inputs(2, 5, 64, 4, 16, 32)),
        Case("large gate weights (gates near the ends of their range)", inputs(1, 6, 64, 4, 16, 32, weight_scale=40.0)),
        Case("a narrow model: x (1, 7, 16), the gate reads all 16 channels, 2 heads of 8", inputs(1, 7, 16, 2, 8, 16)),
        Case("6 heads of 4", inputs(1, 3, 48, 6, 4, 32)),
        Case("float64", inputs(1, 4, 64, 4, 16, 32, dtype=torch.float64)),
    ]
    return check_function(student, value_embedding_gate_reference, cases, "value-embedding gate")
