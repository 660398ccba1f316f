"""Every Muon exercise check fails on the stub and on a plausible wrong answer, and passes on the solution."""

import math

import pytest
import torch

from nanogpt_core.classroom.checks import CheckFailed
from nanogpt_core.classroom.checks.muon import (
    check_cautious_weight_decay, check_muon_update, check_newton_schulz_step, muon_update_reference,
)
from nanogpt_core.muon import cautious_weight_decay, newton_schulz_step, orthogonalize


def stub(*args):
    raise NotImplementedError


def ns_coefficients_swapped(X, a, b, c):  # b on the fifth power, c on the cube
    A = X @ X.mT
    return a * X + (c * A + b * A @ A) @ X


def ns_cubic_term_forgotten(X, a, b, c):
    A = X @ X.mT
    return a * X + b * A @ X


def muon_without_nesterov(W, G, buf, lr, beta):
    buf = beta * buf + (1 - beta) * G
    rows, cols = W.shape
    return W - lr * math.sqrt(max(1.0, rows / cols)) * orthogonalize(buf), buf


def muon_without_shape_factor(W, G, buf, lr, beta):
    buf = beta * buf + (1 - beta) * G
    return W - lr * orthogonalize((1 - beta) * G + beta * buf), buf


def decay_everywhere(W, u, lr, wd):
    return W - lr * (u + wd * W)


def mask_with_opposite_sign(W, u, lr, wd):
    return W - lr * (u + wd * ((u * W) < 0) * W)


@pytest.mark.parametrize(
    "check, solution, wrong",
    [
        (check_newton_schulz_step, newton_schulz_step, [ns_coefficients_swapped, ns_cubic_term_forgotten]),
        (check_muon_update, muon_update_reference, [muon_without_nesterov, muon_without_shape_factor]),
        (check_cautious_weight_decay, cautious_weight_decay, [decay_everywhere, mask_with_opposite_sign]),
    ],
)
def test_check(check, solution, wrong, capsys):
    with pytest.raises(CheckFailed, match="not implemented"):
        check(stub)
    for answer in wrong:
        with pytest.raises(CheckFailed):
            check(answer)
    assert check(solution) is True
    assert "✓" in capsys.readouterr().out


def test_muon_reference_is_the_optimizer_without_normuon_and_decay():
    from nanogpt_core.muon import Muon

    W, G = torch.randn(12, 5), torch.randn(12, 5)
    p = torch.nn.Parameter(W.clone())
    p.grad = G.clone()
    opt = Muon([p], lr=0.03, momentum=0.9, momentum_start=0.9, beta2=None)
    opt.step()
    expected, buf = muon_update_reference(W, G, torch.zeros_like(W), 0.03, 0.9)
    torch.testing.assert_close(p.detach(), expected)
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf)
