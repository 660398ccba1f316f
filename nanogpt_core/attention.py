"""Causal self-attention kernels behind one function.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + M) V,   M[i, j] = 0 if j <= i else -inf

``naive_attention`` writes that formula out and materializes the T x T score matrix, as
GPT-2 did in 2019; it is also the reference the tests compare every fast path against.
``causal_attention`` dispatches to the backend named in the config.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention, the math written out. q, k, v: (B, H, T, D) -> (B, H, T, D)."""
    T = q.size(-2)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(dim=-1) @ v


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "naive") -> torch.Tensor:
    """Causal attention with the named backend. q, k, v: (B, H, T, D) -> (B, H, T, D)."""
    if backend == "naive":
        return naive_attention(q, k, v)
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    raise NotImplementedError(f"attention backend {backend!r} is not built yet; use 'naive' or 'sdpa'")
