"""Checks for chapter 4 (torch.compile and bf16).

    check_clip_rows(fn)  fn(x, max_norm) -> x with every row rescaled to norm <= max_norm,
                         rows already within the bound unchanged, and NO graph break when
                         torch.compile captures it (torch._dynamo.explain(fn)(x, max_norm)
                         .graph_break_count == 0); reference: clip_rows_reference
"""

from __future__ import annotations

import random

import torch

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
    if n:
        raise CheckFailed(
            f"clip rows: the values are right, but torch.compile meets {n} graph break(s): {reasons[0]}. "
            "Express the condition with tensor ops instead of a Python `if` on a tensor."
        )
    print("✓ clip rows: no graph break")
    return True
