"""The chapter-3 checks fail on a stub and on plausible wrong answers, and pass on the solution."""

import pytest
import torch

from nanogpt_core.classroom.checks import CheckFailed
from nanogpt_core.classroom.checks.attention import check_online_softmax_update, check_sliding_window_mask


def stub(*args):
    raise NotImplementedError


# ---- the sliding-window mask --------------------------------------------------------------------


def mask_solution(T, window):
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    return (j <= i) & (i - j <= window)


def mask_window_counts_self(T, window):  # off by one: `window` keys in all instead of window + 1
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    return (j <= i) & (i - j < window)


def mask_not_causal(T, window):  # a symmetric band: future keys inside the window leak in
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    return (i - j).abs() <= window


def mask_excludes_self(T, window):  # strictly causal: the query may not see its own key
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    return (j < i) & (i - j <= window)


def mask_as_floats(T, window):
    return mask_solution(T, window).float()


def test_mask_check_passes_on_solution():
    assert check_sliding_window_mask(mask_solution)


@pytest.mark.parametrize("wrong", [stub, mask_window_counts_self, mask_not_causal, mask_excludes_self, mask_as_floats])
def test_mask_check_fails_on_wrong_answers(wrong):
    with pytest.raises(CheckFailed):
        check_sliding_window_mask(wrong)


def test_mask_check_says_what_is_wrong():
    with pytest.raises(CheckFailed, match="not implemented"):
        check_sliding_window_mask(stub)
    with pytest.raises(CheckFailed, match="bool"):
        check_sliding_window_mask(mask_as_floats)
    with pytest.raises(CheckFailed, match="entries differ"):
        check_sliding_window_mask(mask_window_counts_self)


# ---- one step of the online softmax --------------------------------------------------------------


def update_solution(state, scores, v):
    m, l, acc = state
    m_new = torch.maximum(m, scores.max(dim=-1).values)
    p = torch.exp(scores - m_new[:, None])
    rescale = torch.exp(m - m_new)
    return m_new, rescale * l + p.sum(dim=-1), rescale[:, None] * acc + p @ v


def two_pass_copy(state, scores, v):  # the old exercise's loophole: softmax and logsumexp of what it was given
    return scores.softmax(dim=-1) @ v, scores.logsumexp(dim=-1)


def two_pass_per_block(state, scores, v):  # same shapes, but each block's state ignores the keys before it
    m = scores.max(dim=-1).values
    p = torch.exp(scores - m[:, None])
    return m, p.sum(dim=-1), p @ v


def forgets_to_rescale_acc(state, scores, v):
    m, l, acc = state
    m_new = torch.maximum(m, scores.max(dim=-1).values)
    p = torch.exp(scores - m_new[:, None])
    rescale = torch.exp(m - m_new)
    return m_new, rescale * l + p.sum(dim=-1), acc + p @ v


def forgets_to_rescale_l(state, scores, v):
    m, l, acc = state
    m_new = torch.maximum(m, scores.max(dim=-1).values)
    p = torch.exp(scores - m_new[:, None])
    rescale = torch.exp(m - m_new)
    return m_new, l + p.sum(dim=-1), rescale[:, None] * acc + p @ v


def rescale_upside_down(state, scores, v):  # exp(m_new - m): grows the old part instead of shrinking it
    m, l, acc = state
    m_new = torch.maximum(m, scores.max(dim=-1).values)
    p = torch.exp(scores - m_new[:, None])
    rescale = torch.exp(m_new - m).nan_to_num(0.0, posinf=0.0)  # 0 on the first block, like the solution
    return m_new, rescale * l + p.sum(dim=-1), rescale[:, None] * acc + p @ v


def max_over_the_whole_block(state, scores, v):  # one max for all rows instead of one per row
    m, l, acc = state
    m_new = torch.maximum(m, scores.max())
    p = torch.exp(scores - m_new[:, None])
    rescale = torch.exp(m - m_new)
    return m_new, rescale * l + p.sum(dim=-1), rescale[:, None] * acc + p @ v


def no_max_subtraction(state, scores, v):  # tracks m but accumulates raw exp(s): overflows or underflows
    m, l, acc = state
    p = torch.exp(scores)
    return torch.maximum(m, scores.max(dim=-1).values), l + p.sum(dim=-1), acc + p @ v


def test_online_softmax_check_passes_on_solution(capsys):
    assert check_online_softmax_update(update_solution)
    assert capsys.readouterr().out.startswith("✓ online softmax")


def test_online_softmax_check_passes_on_an_in_place_update():
    def in_place(state, scores, v):
        m, l, acc = state
        m_new = torch.maximum(m, scores.max(dim=-1).values)
        p = torch.exp(scores - m_new[:, None])
        rescale = torch.exp(m - m_new)
        l.mul_(rescale).add_(p.sum(dim=-1))
        acc.mul_(rescale[:, None]).add_(p @ v)
        return m_new, l, acc

    assert check_online_softmax_update(in_place)


@pytest.mark.parametrize("wrong,message", [
    (stub, "not implemented"),
    (two_pass_copy, "tuple of 3 tensors"),
    (two_pass_per_block, "after block 2"),
    (forgets_to_rescale_acc, "acc"),
    (forgets_to_rescale_l, ", l:"),
    (rescale_upside_down, "values differ|NaN or inf"),
    (max_over_the_whole_block, ", m:"),
    (no_max_subtraction, "values differ|NaN or inf"),
])
def test_online_softmax_check_fails_on_wrong_answers(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check_online_softmax_update(wrong)


def test_online_softmax_messages_name_the_block_and_not_the_answer():
    with pytest.raises(CheckFailed) as err:
        check_online_softmax_update(forgets_to_rescale_acc)
    text = str(err.value)
    assert "after block" in text and "keys" in text
    assert "exp(m" not in text and "m_new" not in text  # the rescaling factor is the answer: not given
