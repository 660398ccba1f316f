"""Every Muon exercise check fails on the stub and on plausible wrong answers, and passes on the solution.

Also: the sweep behind chapter 5 extends a grid until its best value is inside it (no training here).
"""

import math

import pytest
import torch

from nanogpt_core import muon
from nanogpt_core.classroom.checks import CheckFailed
from nanogpt_core.classroom.checks.muon import (
    check_cautious_weight_decay,
    check_muon_step,
    check_normuon,
    check_polar_express,
    normuon_reference,
    polar_express_reference,
)
from nanogpt_core.muon import cautious_weight_decay


@pytest.mark.parametrize("check, answer", [(check_polar_express, polar_express_reference),
                                           (check_normuon, normuon_reference),
                                           (check_cautious_weight_decay, cautious_weight_decay)])
def test_the_package_answer_itself_is_refused(check, answer):
    with pytest.raises(CheckFailed, match="write it yourself"):
        check(answer)


def stub(*args):
    raise NotImplementedError


# ---- 5.1 Polar Express: solutions and wrong answers ---------------------------------------------


def _pe(G, steps, coeffs=None, safety=1.02, transpose_back=True, gram="left", order="right"):
    coeffs = coeffs or muon.POLAR_EXPRESS_COEFFS[:steps]
    X = G.float()
    tall = X.size(0) > X.size(1)
    if tall:
        X = X.mT
    X = X / (safety * X.norm() + 1e-7)
    for a, b, c in coeffs:
        A = X @ X.mT if gram == "left" else X.mT @ X
        X = a * X + (b * A + c * A @ A) @ X if order == "right" else a * X + (c * A + b * A @ A) @ X
    return X.mT if tall and transpose_back else X


def pe_solution(G, steps=5):  # written as a student would, with its own operation order
    return _pe(G, steps)


def pe_without_transpose(G, steps=5):  # mathematically the same (X (X^T X) = (X X^T) X): accepted
    X = G.float() / (1.02 * G.float().norm() + 1e-7)
    for a, b, c in muon.POLAR_EXPRESS_COEFFS[:steps]:
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X


def pe_coefficients_swapped(G, steps=5):  # b on A^2, c on A
    return _pe(G, steps, order="swapped")


def pe_newton_schulz_coefficients(G, steps=5):  # the original quintic at every step
    return _pe(G, steps, coeffs=[muon.NEWTON_SCHULZ_COEFFS] * steps)


def pe_first_triple_every_step(G, steps=5):
    return _pe(G, steps, coeffs=[muon.POLAR_EXPRESS_COEFFS[0]] * steps)


def pe_no_safety_factor(G, steps=5):
    return _pe(G, steps, safety=1.0)


def pe_tall_not_transposed_back(G, steps=5):
    return _pe(G, steps, transpose_back=False)


def pe_gram_on_the_wrong_side(G, steps=5):  # A = X^T X: wrong shape for a wide X, wrong values for a square one
    return _pe(G, steps, gram="right")


# ---- 5.2 NorMuon ------------------------------------------------------------------------------------


def _normuon(O, v, beta2, dim=None, rescale=True, ema="right", root=True):
    dim = dim if dim is not None else (-1 if O.size(-2) >= O.size(-1) else -2)
    m = O.square().mean(dim=dim, keepdim=True)
    v = {"right": beta2 * v + (1 - beta2) * m, "swapped": (1 - beta2) * v + beta2 * m, "none": m}[ema]
    S = O / (v.sqrt() if root else v)
    if rescale:
        S = S * O.norm() / S.norm()
    return S, v


def normuon_solution(O, v, beta2):
    return _normuon(O, v, beta2)


def normuon_always_per_row(O, v, beta2):  # normalizes rows of a wide matrix too (the wrong axis)
    return _normuon(O, torch.zeros(O.size(0), 1) if O.size(0) < O.size(1) else v, beta2, dim=-1)


def normuon_per_column_for_tall(O, v, beta2):  # the axes the other way round
    dim = -2 if O.size(-2) >= O.size(-1) else -1
    return _normuon(O, torch.zeros(1, O.size(1)) if dim == -2 else torch.zeros(O.size(0), 1), beta2, dim=dim)


def normuon_without_rescale(O, v, beta2):
    return _normuon(O, v, beta2, rescale=False)


def normuon_betas_swapped(O, v, beta2):
    return _normuon(O, v, beta2, ema="swapped")


def normuon_without_running_mean(O, v, beta2):  # v = mean(O^2) of this step only
    return _normuon(O, v, beta2, ema="none")


def normuon_divides_by_v(O, v, beta2):  # forgot the square root
    return _normuon(O, v, beta2, root=False)


# ---- 5.3 cautious weight decay ---------------------------------------------------------------------


def cautious_decay_solution(W, u, lr, wd):  # written as a student would
    agree = (u * W >= 0).to(W.dtype)
    return W - lr * u - lr * wd * agree * W


def decay_everywhere(W, u, lr, wd):
    return W - lr * (u + wd * W)


def mask_with_opposite_sign(W, u, lr, wd):
    return W - lr * (u + wd * ((u * W) < 0) * W)


def mask_strict_inequality(W, u, lr, wd):  # u == 0 is not decayed
    return W - lr * (u + wd * ((u * W) > 0) * W)


def decay_without_lr(W, u, lr, wd):
    return W - lr * u - wd * ((u * W) >= 0) * W


# ---- 5.4 one Muon step ----------------------------------------------------------------------------------


def _muon_step(W, G, buf, v, lr, momentum, weight_decay, beta2, nesterov=True, shape_factor=True, mask_sign=1,
               decay_lr=True, normuon_first=False, sgd_momentum=False):
    buf = momentum * buf + (G if sgd_momentum else (1 - momentum) * G)
    g = (1 - momentum) * G + momentum * buf if nesterov else buf
    if normuon_first:
        g, v = _normuon(g, v, beta2)
        O = pe_solution(g)
    else:
        O, v = _normuon(pe_solution(g), v, beta2)
    rows, cols = W.shape
    lr = lr * (math.sqrt(max(1.0, rows / cols)) if shape_factor else 1.0)
    mask = (mask_sign * O * W) >= 0
    W = W - lr * O - (lr if decay_lr else 1.0) * weight_decay * mask * W
    return W, buf, v


def muon_step_solution(W, G, buf, v, lr, momentum, weight_decay, beta2):
    return _muon_step(W, G, buf, v, lr, momentum, weight_decay, beta2)


def muon_step_with_package_pieces(W, G, buf, v, lr, momentum, weight_decay, beta2):
    buf = buf.lerp(G, 1 - momentum)
    O = muon.orthogonalize(G.lerp(buf, momentum))
    O = muon.normuon_normalize(O, v, beta2)  # updates v in place
    lr = lr * math.sqrt(max(1.0, W.size(0) / W.size(1)))
    return muon.cautious_weight_decay(W, O, lr, weight_decay), buf, v


def muon_step_without_nesterov(*args):
    return _muon_step(*args, nesterov=False)


def muon_step_without_shape_factor(*args):
    return _muon_step(*args, shape_factor=False)


def muon_step_mask_flipped(*args):
    return _muon_step(*args, mask_sign=-1)


def muon_step_decay_without_lr(*args):
    return _muon_step(*args, decay_lr=False)


def muon_step_normuon_before_orthogonalize(*args):
    return _muon_step(*args, normuon_first=True)


def muon_step_sgd_momentum(*args):  # buf = beta buf + G (PyTorch SGD's convention), not the EMA
    return _muon_step(*args, sgd_momentum=True)


def muon_step_calls_the_package(W, G, buf, v, lr, momentum, weight_decay, beta2):
    W, buf, v = W.clone(), buf.clone(), v.clone()
    muon.muon_update_(W, G, buf, v, momentum, lr, weight_decay, beta2)
    return W, buf, v


@pytest.mark.parametrize(
    "check, solutions, wrong",
    [
        (check_polar_express, [pe_solution, pe_without_transpose],
         [pe_coefficients_swapped, pe_newton_schulz_coefficients, pe_first_triple_every_step, pe_no_safety_factor,
          pe_tall_not_transposed_back, pe_gram_on_the_wrong_side]),
        (check_normuon, [normuon_solution],
         [normuon_always_per_row, normuon_per_column_for_tall, normuon_without_rescale, normuon_betas_swapped,
          normuon_without_running_mean, normuon_divides_by_v]),
        (check_cautious_weight_decay, [cautious_decay_solution],
         [decay_everywhere, mask_with_opposite_sign, mask_strict_inequality, decay_without_lr]),
        (check_muon_step, [muon_step_solution, muon_step_with_package_pieces],
         [muon_step_without_nesterov, muon_step_without_shape_factor, muon_step_mask_flipped,
          muon_step_decay_without_lr, muon_step_normuon_before_orthogonalize, muon_step_sgd_momentum,
          muon_step_calls_the_package]),
    ],
)
def test_check(check, solutions, wrong, capsys):
    with pytest.raises(CheckFailed, match="not implemented"):
        check(stub)
    for answer in wrong:
        with pytest.raises(CheckFailed):
            check(answer)
    for solution in solutions:
        assert check(solution) is True
    assert "✓" in capsys.readouterr().out


def test_messages_name_the_step_without_the_answer():
    with pytest.raises(CheckFailed, match="after step 1 of 5") as err:
        check_polar_express(pe_no_safety_factor)
    assert "1.02" not in str(err.value)
    with pytest.raises(CheckFailed, match="second moment v"):
        check_normuon(normuon_betas_swapped)
    with pytest.raises(CheckFailed, match="step 1 of 5.*weights"):
        check_muon_step(muon_step_without_shape_factor)


# ---- the sweep's protocol (no training: a fake run) ------------------------------------------------


def test_sweep_extends_each_grid_until_the_best_is_inside(monkeypatch):
    from nanogpt_core.lab import muon_sweep

    optimum = {"adamw": 2.5e-4, "muon-only": 0.08, "muon-stage": 0.02}

    def fake_run(stage, steps, eval_every, eval_tokens, progress=False, **ov):
        arm = "adamw" if "lr" in ov else ("muon-only" if ov.get("optimizer") == "muon" else "muon-stage")
        value = ov.get("lr") or ov["matrix_lr"]
        assert ov["warmup_steps"] == 4, "every arm gets the same warmup"
        final = 2.4 + 0.01 * math.log2(value / optimum[arm]) ** 2 + 1e-3 * (ov["seed"] % 7)
        val = [{"step": s, "bpb": 3.6 - (3.6 - final) * s / steps} for s in range(0, steps + 1, eval_every)]
        return dict(stage=stage, overrides=ov, final_val_bpb=final, val=val, losses=[], wall_seconds=1.0,
                    seconds_per_step=0.1, tokens_per_second=1.0, hardware="test", torch_version="test")

    monkeypatch.setattr(muon_sweep, "run", fake_run)
    result = muon_sweep.sweep(steps=20, warmup=4, seeds=(1, 2, 3), eval_every=5, log=lambda *_: None)
    for arm, best in optimum.items():
        t = result["arms"][arm]
        assert t["bracketed"] and t["grid"][0] < t["best"] < t["grid"][-1]
        assert t["best"] == pytest.approx(best)
        assert [r["seed"] for r in t["seed_runs"]] == [1, 2, 3]
    assert set(result["summary"]["paired"]) == {"muon-only - adamw", "muon-stage - adamw", "muon-stage - muon-only"}
    fields = {d["field"] for d in result["stage_differences"]}
    assert {"optimizer", "schedule", "warmup_steps", "grad_clip", "final_lr_frac"} <= fields
