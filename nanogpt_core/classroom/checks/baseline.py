"""Checks for chapter 2 (the GPT-2 baseline): causal self-attention, and the parameter count.

    check_causal_attention(fn)  fn(q, k, v) -> y, all (B, H, T, D); reference: attention.naive_attention
    check_count_params(fn)      fn(n_layer, n_embd, vocab_size, seq_len) -> int; reference: GPT(...).num_params()
"""

from __future__ import annotations

import random

import torch

from ...attention import naive_attention
from ...config import ModelConfig
from ...model import GPT
from . import Case, CheckFailed, check_function


def check_causal_attention(student) -> bool:
    """Compare ``student(q, k, v)`` with the reference on random (B, H, T, D) inputs."""
    g = torch.Generator().manual_seed(random.randrange(2**31))
    cases = []
    for B, H, T, D in ((1, 1, 1, 8), (2, 3, 5, 4), (2, 4, 16, 32), (1, 2, 33, 64)):
        q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
        cases.append(Case(f"(B, H, T, D) = {(B, H, T, D)}", (q, k, v)))
    return check_function(student, naive_attention, cases, "causal attention", atol=1e-5, rtol=1e-4)


def gpt_param_count(n_layer: int, n_embd: int, vocab_size: int, seq_len: int) -> int:
    """The reference: build the 2019 GPT and count its parameters (a tied head counts once).

    Built on the CPU, so keep the sizes small (a few M parameters build in milliseconds).
    """
    cfg = ModelConfig(vocab_size=vocab_size, n_layer=n_layer, n_head=1, n_embd=n_embd, seq_len=seq_len)
    return GPT(cfg).num_params()["total"]


def check_count_params(student) -> bool:
    """Compare ``student(n_layer, n_embd, vocab_size, seq_len)`` with the parameters of a built model."""
    rng = random.Random()
    cases = [
        Case("the toy model (4, 256, 4096, 256)", (4, 256, 4096, 256)),
        Case("GPT-2 small's vocabulary, narrow (2, 16, 50257, 1024)", (2, 16, 50257, 1024)),
        Case("one layer (1, 8, 10, 4)", (1, 8, 10, 4)),
    ]
    for _ in range(3):
        args = (rng.randint(1, 6), 8 * rng.randint(1, 12), rng.randint(257, 5000), rng.randint(4, 512))
        cases.append(Case(f"random {args}", args))

    def as_int(*args):
        got = student(*args)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, float) and got.is_integer():
            got = int(got)
        if not isinstance(got, int):
            raise CheckFailed(f"count_params must return an int, got {type(got).__name__}")
        return got

    return check_function(as_int, gpt_param_count, cases, "count_params")
