"""Checks for chapter 4 (torch.compile and bf16).

    check_clip_rows(fn)     fn(x, max_norm) -> x with every row rescaled to norm <= max_norm,
                            rows already within the bound unchanged, and NO graph break when
                            torch.compile captures it (torch._dynamo.explain(fn)(x, max_norm)
                            .graph_break_count == 0); reference: clip_rows_reference
    check_measured_mfu(fn)  fn(matmul_params, windows, seq_len, n_embd, batch_size, step_seconds,
                            peak_flops) -> MFU as a fraction; reference: cost.mfu with the FLOPs per
                            token of GPT.flops_per_token (6 per matmul weight + attention_flops_per_token)
"""

from __future__ import annotations

import random

import torch

from ...attention import layer_windows
from ...config import ModelConfig
from ...cost import mfu
from ...model import GPT
from . import Case, CheckFailed, check_function


def clip_rows_with_graph_break(x: torch.Tensor, max_norm: float) -> torch.Tensor:
    """The exercise's starting point: correct, but the Python `if` on a tensor breaks the graph."""
    norms = x.norm(dim=-1, keepdim=True)
    if (norms > max_norm).any():  # data-dependent control flow: Dynamo must stop here
        x = x * (max_norm / norms).clamp(max=1.0)
    return x


def clip_rows_reference(x: torch.Tensor, max_norm: float) -> torch.Tensor:
    norms = x.norm(dim=-1, keepdim=True)
    return x * (max_norm / norms).clamp(max=1.0)


def graph_breaks(fn, *args) -> tuple[int, list[str]]:
    """How many graph breaks torch.compile would meet in ``fn(*args)``, and why."""
    import torch._dynamo

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*args)
    return explanation.graph_break_count, [str(b.reason).splitlines()[0] for b in explanation.break_reasons]


def check_clip_rows(student) -> bool:
    """Values against the reference on random inputs, then: no graph break under torch.compile."""
    g = torch.Generator().manual_seed(random.randrange(2**31))
    cases = [
        Case("(4, 8), some rows above max_norm=1.0", (torch.randn(4, 8, generator=g), 1.0)),
        Case("(16, 32), every row within max_norm=100.0", (torch.randn(16, 32, generator=g), 100.0)),
        Case("(3, 5, 7), batched rows, max_norm=0.5", (torch.randn(3, 5, 7, generator=g), 0.5)),
    ]
    check_function(student, clip_rows_reference, cases, "clip rows")
    n, reasons = graph_breaks(student, *cases[0].args)
    if n > 0:
        raise CheckFailed(
            f"clip rows: the values are right, but torch.compile meets {n} graph break(s): {reasons[0]}. "
            "Express the condition with tensor ops instead of a Python `if` on a tensor."
        )
    print("✓ clip rows: no graph break")
    return True


# ---- MFU from a measured step time -------------------------------------------------------------


def matmul_params(model: torch.nn.Module) -> int:
    """The weights that take part in matrix multiplies: every nn.Linear's weight (the head included)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def _mfu_case(rng: random.Random, name: str, cfg: ModelConfig, peak: float) -> Case:
    """A case built from a real model: the student gets its shape, the reference its own FLOPs count."""
    with torch.device("meta"):  # shapes only: no memory, no initialization cost
        model = GPT(cfg)
    batch = rng.choice((1, 2, 4, 8, 16, 32))
    step_seconds = rng.uniform(0.05, 3.0)
    args = (matmul_params(model), layer_windows(cfg), cfg.seq_len, cfg.n_embd, batch, step_seconds, peak)
    expected = mfu(model.flops_per_token(), batch * cfg.seq_len / step_seconds, peak)
    return Case(f"{name}: batch {batch} x seq_len {cfg.seq_len}, step {step_seconds:.3f} s", args, {"expected": expected})


def check_measured_mfu(student) -> bool:
    """Compare ``student(matmul_params, windows, seq_len, n_embd, batch_size, step_seconds, peak_flops)``
    with the package's MFU (cost.mfu of GPT.flops_per_token) for real model shapes."""
    rng = random.Random()
    cases = [
        _mfu_case(rng, "the toy model, SSSL windows", ModelConfig(window_pattern="SSSL"), 400e9),
        _mfu_case(rng, "the toy model, full context (gpt2 stage)", ModelConfig(), 400e9),
        _mfu_case(rng, "nanochat's d24 shape, SSSL, one 8xH100 node", ModelConfig(
            vocab_size=32768, n_layer=24, n_head=12, n_embd=1536, seq_len=2048, window_pattern="SSSL",
            bias=False, tie_embeddings=False), 8 * 989e12),
    ]
    for i in range(3):
        n_head = rng.randint(1, 4)
        cfg = ModelConfig(vocab_size=rng.randint(64, 2048), n_layer=rng.randint(1, 6), n_head=n_head,
                          n_embd=n_head * 8 * rng.randint(1, 4), seq_len=rng.choice((16, 64, 100, 256, 512)),
                          window_pattern="".join(rng.choice("SL") for _ in range(rng.randint(1, 4))),
                          short_window=rng.choice((0.125, 0.25, 0.5)))
        cases.append(_mfu_case(rng, f"random shape {i + 1} ({cfg.n_layer} layers, width {cfg.n_embd}, "
                                    f"pattern {cfg.window_pattern})", cfg, rng.choice((100e9, 312e12, 989e12))))

    def reference(*args, expected):
        return expected

    def as_fraction(*args, expected):
        got = student(*args)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (int, float)):
            raise CheckFailed(f"measured MFU must return a number (a fraction such as 0.42), got {type(got).__name__}")
        if expected and 99 < got / expected < 101:
            raise CheckFailed("measured MFU: return a fraction of the peak (0.42), not a percentage (42)")
        return float(got)

    return check_function(as_fraction, reference, cases, "measured MFU", atol=0.0, rtol=1e-9)
