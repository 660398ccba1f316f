"""Exercise checks: compare a student's function with the reference on fresh random inputs.

Every chapter's exercises have checks in a module of this package (``baseline``, ``muon``...).
A check calls the student's function on a few cases, compares with the reference, and
raises ``CheckFailed`` with a message that says what is wrong (which case, shape, dtype or
values) without printing the answer. On success it prints one line and returns True.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


class CheckFailed(AssertionError):
    """The student's answer differs from the reference; the message says how."""


@dataclass
class Case:
    """One input to try: a short description (shown on failure) and the arguments."""

    name: str
    args: tuple
    kwargs: dict | None = None


def compare_tensors(got, expected, where: str, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Raise CheckFailed unless ``got`` matches ``expected`` in type, shape, dtype and value."""
    if not isinstance(got, torch.Tensor):
        raise CheckFailed(f"{where}: expected a torch.Tensor, got {type(got).__name__}")
    if got.shape != expected.shape:
        raise CheckFailed(f"{where}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    if got.dtype != expected.dtype:
        raise CheckFailed(f"{where}: dtype {got.dtype}, expected {expected.dtype}")
    if expected.dtype == torch.bool or not expected.is_floating_point():
        wrong = (got != expected).sum().item()
        if wrong:
            raise CheckFailed(f"{where}: {wrong} of {expected.numel()} entries differ from the reference")
        return
    if not torch.isfinite(got).all() and torch.isfinite(expected).all():
        raise CheckFailed(f"{where}: the result contains NaN or inf")
    if not torch.allclose(got, expected, atol=atol, rtol=rtol, equal_nan=True):
        err = (got - expected).abs().nan_to_num(0.0).max().item()
        raise CheckFailed(f"{where}: values differ from the reference (max abs error {err:.3g}, tolerance {atol:g})")


def compare_values(got, expected, where: str, **tol) -> None:
    """Compare tensors, numbers, or tuples/lists of them."""
    if isinstance(expected, torch.Tensor):
        return compare_tensors(got, expected, where, **tol)
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            raise CheckFailed(f"{where}: expected a sequence of {len(expected)} items, got {got!r:.80}")
        for i, (g, e) in enumerate(zip(got, expected)):
            compare_values(g, e, f"{where}, item {i}", **tol)
        return
    if isinstance(expected, float):
        atol = tol.get("atol", 1e-5)
        if not isinstance(got, (int, float)) or abs(got - expected) > atol + tol.get("rtol", 1e-4) * abs(expected):
            raise CheckFailed(f"{where}: got {got!r:.40}, which is not the expected value (tolerance {atol:g})")
        return
    if got != expected:
        raise CheckFailed(f"{where}: got {got!r:.60}, which is not the expected value")


def call_student(student: Callable, name: str, where: str, *args, **kwargs):
    """The student's result; CheckFailed "not implemented yet" for the stub, and CheckFailed naming
    ``where`` for any other exception the student's code raises."""
    try:
        return student(*args, **kwargs)
    except NotImplementedError:
        raise CheckFailed(f"{name}: not implemented yet (the function still raises NotImplementedError)") from None
    except CheckFailed:
        raise
    except Exception as err:
        raise CheckFailed(f"{where}: raised {type(err).__name__}: {err}") from err


def check_function(
    student: Callable, reference: Callable, cases: Sequence[Case], name: str, **tol
) -> bool:
    """Run ``student`` and ``reference`` on every case and compare; raise on the first mismatch."""
    for case in cases:
        kwargs = case.kwargs or {}
        expected = reference(*_clone(case.args), **kwargs)
        got = call_student(student, name, f"{name}, case '{case.name}'", *_clone(case.args), **kwargs)
        compare_values(got, expected, f"{name}, case '{case.name}'", **tol)
    print(f"✓ {name}: all {len(cases)} cases match the reference")
    return True


def _clone(args: tuple) -> tuple:
    """Fresh copies, so a function that modifies its inputs cannot affect the other run."""
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
