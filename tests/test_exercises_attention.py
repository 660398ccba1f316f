"""The chapter-3 checks fail on a stub and on plausible wrong answers, and pass on the solution."""

import math

import pytest
import torch

from nanogpt_core.classroom.checks import CheckFailed
from nanogpt_core.classroom.checks.attention import check_online_softmax, check_sliding_window_mask


def mask_solution(T, window):
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    return (j <= i) & (i - j <= window)


def mask_window_counts_self(T, window):  # off by one: `window` keys in all instead of window + 1
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    return (j <= i) & (i - j < window)


def mask_not_causal(T, window):
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    return (i - j).abs() <= window


def mask_as_floats(T, window):
    return mask_solution(T, window).float()


def stub(*args):
    raise NotImplementedError


def online_solution(q, k, v, block_size):
    m = torch.tensor(float("-inf"), dtype=q.dtype)
    l = torch.zeros((), dtype=q.dtype)
    acc = torch.zeros_like(q)
    for start in range(0, k.size(0), block_size):
        s = k[start : start + block_size] @ q / math.sqrt(q.numel())
        m_new = torch.maximum(m, s.max())
        p = torch.exp(s - m_new)
        scale = torch.exp(m - m_new)
        l = l * scale + p.sum()
        acc = acc * scale + p @ v[start : start + block_size]
        m = m_new
    return acc / l, m + torch.log(l)


def online_no_rescale(q, k, v, block_size):  # forgets to rescale l and acc when the max grows
    m = torch.tensor(float("-inf"), dtype=q.dtype)
    l = torch.zeros((), dtype=q.dtype)
    acc = torch.zeros_like(q)
    for start in range(0, k.size(0), block_size):
        s = k[start : start + block_size] @ q / math.sqrt(q.numel())
        m = torch.maximum(m, s.max())
        p = torch.exp(s - m)
        l = l + p.sum()
        acc = acc + p @ v[start : start + block_size]
    return acc / l, m + torch.log(l)


def online_no_scaling(q, k, v, block_size):  # forgets 1/sqrt(D)
    out, lse = online_solution(q * math.sqrt(q.numel()), k, v, block_size)
    return out, lse


def online_lse_without_max(q, k, v, block_size):  # returns log(l) and forgets m
    out, lse = online_solution(q, k, v, block_size)
    scores = k @ q / math.sqrt(q.numel())
    return out, lse - scores.max()


def test_mask_check_passes_on_solution():
    assert check_sliding_window_mask(mask_solution)


@pytest.mark.parametrize("wrong", [stub, mask_window_counts_self, mask_not_causal, mask_as_floats])
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


def test_online_softmax_check_passes_on_solution():
    assert check_online_softmax(online_solution)


@pytest.mark.parametrize("wrong", [stub, online_no_rescale, online_no_scaling, online_lse_without_max])
def test_online_softmax_check_fails_on_wrong_answers(wrong):
    with pytest.raises(CheckFailed):
        check_online_softmax(wrong)
