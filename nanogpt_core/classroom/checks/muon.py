"""Checks for chapter 5 (Muon). Each one tests a process, step by step, against the package.

    check_polar_express(fn)          fn(G, steps) -> approximately U V^T: Frobenius scaling (x 1.02),
                                     ``steps`` Polar Express iterations, tall matrices transposed.
                                     Checked after every step against the package's iterate, then
                                     the invariant: G's singular vectors kept, singular values near 1.
    check_normuon(fn)                fn(O, v, beta2) -> (O_new, v_new): NorMuon's per-neuron second
                                     moment and normalization, fed a stream of updates; the output
                                     and the state are checked after every step.
    check_cautious_weight_decay(fn)  fn(W, u, lr, wd) -> W - lr (u + wd * 1[u * W >= 0] * W)
    check_muon_step(fn)              fn(W, G, buf, v, lr, momentum, weight_decay, beta2) ->
                                     (W_new, buf_new, v_new): one whole Muon step, run for several
                                     steps beside the package's Muon optimizer; weights, momentum
                                     buffer and second moment compared after every step.
"""

from __future__ import annotations

import random

import torch

from ... import muon as _muon
from ...muon import (Muon, cautious_weight_decay, muon_update_, newton_schulz_step, normuon_normalize, orthogonalize,
                     singular_value_map)
from ...schedules import momentum_at, weight_decay_at
from ..watch import answered_by
from . import Case, CheckFailed, call_student, check_function, compare_values


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(random.randrange(2**31))


def _call(student, name: str, where: str, *args):
    """The student's result; CheckFailed for NotImplementedError or any other exception."""
    return call_student(student, name, f"{name}, {where}", *args)


def _with_spectrum(m: int, n: int, g: torch.Generator, low: float = 1e-2) -> tuple[torch.Tensor, ...]:
    """A random m x n matrix whose singular values spread from ``low`` to 1 (times a random scale), with U, V."""
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    s = torch.logspace(torch.log10(torch.tensor(low)).item(), 0, k, dtype=torch.float64) * (0.1 + 10 * torch.rand(1, generator=g).item())
    return ((U * s) @ V.mT).float(), U, V


# ---- Exercise 5.1: the Polar Express iteration ---------------------------------------------------


def polar_express_reference(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The package's orthogonalize with Polar Express's first ``steps`` coefficient triples, in fp32."""
    return orthogonalize(G, steps, "polar_express", torch.float32)


@answered_by(orthogonalize, newton_schulz_step, singular_value_map, polar_express_reference)
def check_polar_express(student) -> bool:
    """The iterate after each of the 5 steps vs the package's, then U V^T's invariants on the result."""
    name = "Polar Express"
    g = _gen()
    shapes = ((24, 64), (40, 40), (64, 24), (8, 40))
    for m, n in shapes:
        G, U, V = _with_spectrum(m, n, g)
        for k in range(1, len(_muon.POLAR_EXPRESS_COEFFS) + 1):
            where = f"G of shape {(m, n)}, after step {k} of 5"
            got = _call(student, name, where, G.clone(), k)
            compare_values(got, polar_express_reference(G, k), f"{name}, {where}", atol=1e-4, rtol=1e-4)
        # the invariant: the result keeps G's singular vectors and has singular values near 1
        D = U.mT @ got.double() @ V
        off = (D - torch.diag_embed(torch.diagonal(D))).norm() / D.norm()
        if off > 1e-3:
            raise CheckFailed(f"{name}, G of shape {(m, n)}: the result does not keep G's singular vectors "
                              f"(U^T O V is not diagonal: {off:.2g} of its norm is off the diagonal)")
        sv = torch.linalg.svdvals(got.double())
        if sv.min() < 0.8 or sv.max() > 1.2:
            raise CheckFailed(f"{name}, G of shape {(m, n)}: after 5 steps the singular values lie in "
                              f"[{sv.min():.3f}, {sv.max():.3f}]; they should all be within 0.2 of 1")
    print(f"✓ {name}: every iterate of {len(shapes)} matrices (wide, square, tall) matches the reference, "
          "and the results keep G's singular vectors with singular values in [0.8, 1.2]")
    return True


# ---- Exercise 5.2: NorMuon ------------------------------------------------------------------------


def normuon_reference(O: torch.Tensor, v: torch.Tensor, beta2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The package's normuon_normalize in functional form: (normalized O, new second moment)."""
    v = v.clone()
    return normuon_normalize(O, v, beta2), v


def _state_shape(m: int, n: int) -> tuple[int, int]:
    return (m, 1) if m >= n else (1, n)


@answered_by(normuon_normalize, normuon_reference)
def check_normuon(student) -> bool:
    """A stream of updates fed one at a time; the output and the state v compared after every step."""
    name = "NorMuon"
    g = _gen()
    shapes, steps = ((32, 12), (12, 32), (16, 16)), 4
    for m, n in shapes:
        beta2 = round(random.uniform(0.8, 0.97), 3)
        v_ref = torch.zeros(_state_shape(m, n))
        v_got = v_ref.clone()
        for t in range(1, steps + 1):
            # an update with uneven neurons: rows (or columns) of very different scale
            scale = torch.rand(m, 1, generator=g) * 3 + 0.05 if m >= n else torch.rand(1, n, generator=g) * 3 + 0.05
            O = orthogonalize(torch.randn(m, n, generator=g)) * scale
            where = f"O of shape {(m, n)}, beta2={beta2}, step {t} of {steps}"
            out = _call(student, name, where, O.clone(), v_got.clone(), beta2)
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                raise CheckFailed(f"{name}, {where}: return a pair (normalized O, new v), got {type(out).__name__}")
            expected, v_ref = normuon_reference(O, v_ref, beta2)
            got, v_got = out
            compare_values(v_got, v_ref, f"{name}, {where}: the second moment v", atol=1e-6, rtol=1e-4)
            compare_values(got, expected, f"{name}, {where}: the normalized update", atol=1e-5, rtol=1e-4)
    print(f"✓ {name}: {steps} steps on each of {len(shapes)} matrices (tall, wide, square): output and state "
          "match the reference after every step")
    return True


# ---- Exercise 5.3: cautious weight decay -----------------------------------------------------------


@answered_by(cautious_weight_decay)
def check_cautious_weight_decay(student) -> bool:
    """Compare ``student(W, u, lr, wd)`` with the reference on random weights and updates (some of them 0)."""
    g = _gen()
    cases = []
    for shape in ((5, 5), (7, 3), (2, 4, 6)):
        W, u = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
        u[torch.rand(*shape, generator=g) < 0.2] = 0.0  # an update of exactly 0 is "the same sign" (u * W >= 0)
        lr, wd = round(random.uniform(0.01, 0.1), 3), round(random.uniform(0.1, 2.0), 2)
        cases.append(Case(f"W of shape {shape}, lr={lr}, wd={wd}", (W, u, lr, wd)))
    return check_function(student, cautious_weight_decay, cases, "cautious weight decay", atol=1e-6, rtol=1e-5)


# ---- Exercise 5.4: one Muon step ------------------------------------------------------------------------


@answered_by(muon_update_, Muon)
def check_muon_step(student) -> bool:
    """Several steps beside the package's Muon optimizer: W, momentum buffer and second moment after each."""
    name = "one Muon step"
    g = _gen()
    shapes, steps = ((24, 8), (8, 24), (16, 16)), 5
    for m, n in shapes:
        W0 = torch.randn(m, n, generator=g) * 0.5
        p = torch.nn.Parameter(W0.clone())
        lr, wd = round(random.uniform(0.01, 0.05), 4), round(random.uniform(0.5, 2.0), 2)
        opt = Muon([p], lr=lr, momentum=0.95, beta2=0.95, weight_decay=wd)
        W, buf, v = W0.clone(), torch.zeros(m, n), torch.zeros(_state_shape(m, n))
        for t in range(1, steps + 1):
            G = torch.randn(m, n, generator=g)
            h = opt.param_groups[0]  # this step's momentum and weight decay, scheduled as the training loop does
            h.update(momentum=momentum_at(t - 1, 0.85, 0.95, 3), weight_decay=weight_decay_at(t - 1, wd, 2 * steps))
            where = (f"W of shape {(m, n)}, step {t} of {steps} (lr={h['lr']:g}, momentum={h['momentum']:.4g}, "
                     f"weight_decay={h['weight_decay']:.4g}, beta2={h['beta2']:g})")
            out = _call(student, name, where, W.clone(), G.clone(), buf.clone(), v.clone(), h["lr"],
                        h["momentum"], h["weight_decay"], h["beta2"])
            if not isinstance(out, (tuple, list)) or len(out) != 3:
                raise CheckFailed(f"{name}, {where}: return (W_new, buf_new, v_new), got {type(out).__name__}")
            W, buf, v = out
            p.grad = G.clone()
            opt.step()
            state = opt.state[p]
            compare_values(buf, state["momentum_buffer"], f"{name}, {where}: the momentum buffer", atol=1e-5)
            compare_values(v, state["second_moment"][0], f"{name}, {where}: the NorMuon second moment", atol=1e-6)
            compare_values(W, p.detach(), f"{name}, {where}: the weights", atol=1e-4, rtol=1e-4)
    print(f"✓ {name}: {steps} steps on each of {len(shapes)} matrices (tall, wide, square) match the package's "
          "Muon optimizer (weights, momentum buffer, second moment) after every step")
    return True
