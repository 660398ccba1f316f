"""The chapter-4 checks fail on a stub and on plausible wrong answers, and pass on the solution:
the graph-break fix (the original, an .item() break, wrong values) and the measured MFU (2N instead
of 6N, no attention term, per sequence instead of per token, windows ignored, a percentage)."""

import pytest
import torch

from nanogpt_core.attention import layer_windows
from nanogpt_core.classroom.checks import CheckFailed
from nanogpt_core.classroom.checks.compile import (check_clip_rows, check_measured_mfu, clip_rows_with_graph_break,
                                                   graph_breaks, matmul_params)


def solution(x, max_norm):
    norms = x.norm(dim=-1, keepdim=True)
    return x * (max_norm / norms).clamp(max=1.0)


def stub(x, max_norm):
    raise NotImplementedError


def clips_every_row(x, max_norm):  # no graph break, but scales rows that were within the bound up
    return x * (max_norm / x.norm(dim=-1, keepdim=True))


def item_break(x, max_norm):  # right values, but .item() leaves the graph
    norms = x.norm(dim=-1, keepdim=True)
    if norms.max().item() > max_norm:
        return x * (max_norm / norms).clamp(max=1.0)
    return x


def test_original_has_a_graph_break_and_the_solution_none():
    x = torch.randn(4, 8)
    assert graph_breaks(clip_rows_with_graph_break, x, 1.0)[0] >= 1
    assert graph_breaks(solution, x, 1.0)[0] == 0


def test_check_passes_on_solution():
    assert check_clip_rows(solution)


@pytest.mark.parametrize("wrong,message", [
    (stub, "not implemented"),
    (clip_rows_with_graph_break, "graph break"),
    (item_break, "graph break"),
    (clips_every_row, "values differ"),
])
def test_check_fails_on_wrong_answers(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check_clip_rows(wrong)


def test_check_rejects_clamping_elements_and_the_global_norm():
    def clamps_elements(x, max_norm):  # bounds each entry, not each row's norm
        return x.clamp(-max_norm, max_norm)

    def global_norm(x, max_norm):  # one norm over the whole tensor, as clip_grad_norm_ does for gradients
        return x * (max_norm / x.norm()).clamp(max=1.0)

    for wrong in (clamps_elements, global_norm):
        with pytest.raises(CheckFailed, match="values differ"):
            check_clip_rows(wrong)


# ---- measured MFU ------------------------------------------------------------------------------


def mfu_solution(matmul_params, windows, seq_len, n_embd, batch_size, step_seconds, peak_flops):
    attention = sum(12 * n_embd * min(w, seq_len) for w in windows)
    flops_per_token = 6 * matmul_params + attention
    return flops_per_token * batch_size * seq_len / step_seconds / peak_flops


def mfu_forward_only(matmul_params, windows, seq_len, n_embd, batch_size, step_seconds, peak_flops):  # 2N
    attention = sum(4 * n_embd * min(w, seq_len) for w in windows)
    return (2 * matmul_params + attention) * batch_size * seq_len / step_seconds / peak_flops


def mfu_without_attention(matmul_params, windows, seq_len, n_embd, batch_size, step_seconds, peak_flops):
    return 6 * matmul_params * batch_size * seq_len / step_seconds / peak_flops


def mfu_per_sequence(matmul_params, windows, seq_len, n_embd, batch_size, step_seconds, peak_flops):
    attention = sum(12 * n_embd * min(w, seq_len) for w in windows)  # FLOPs per token, times sequences per second
    return (6 * matmul_params + attention) * batch_size / step_seconds / peak_flops


def mfu_ignores_windows(matmul_params, windows, seq_len, n_embd, batch_size, step_seconds, peak_flops):
    attention = len(windows) * 12 * n_embd * seq_len  # every layer charged the full context
    return (6 * matmul_params + attention) * batch_size * seq_len / step_seconds / peak_flops


def mfu_stub(*args):
    raise NotImplementedError


def mfu_as_percent(*args):
    return 100 * mfu_solution(*args)


def test_mfu_check_passes_on_solution(capsys):
    assert check_measured_mfu(mfu_solution)
    assert "✓ measured MFU" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,message", [
    (mfu_stub, "not implemented"),
    (mfu_forward_only, "not the expected value"),
    (mfu_without_attention, "not the expected value"),
    (mfu_per_sequence, "not the expected value"),
    (mfu_ignores_windows, "not the expected value"),
    (mfu_as_percent, "not a percentage"),
])
def test_mfu_check_fails_on_wrong_answers(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check_measured_mfu(wrong)


def test_mfu_reference_is_the_package_formula():
    from nanogpt_core.cost import mfu
    from nanogpt_core.config import stage_config
    from nanogpt_core.model import GPT

    cfg = stage_config("flash-attention", "toy").model
    model = GPT(cfg)
    args = (matmul_params(model), layer_windows(cfg), cfg.seq_len, cfg.n_embd, 16, 0.5, 400e9)
    expected = mfu(model.flops_per_token(), 16 * cfg.seq_len / 0.5, 400e9)
    assert abs(mfu_solution(*args) - expected) < 1e-12 * expected
