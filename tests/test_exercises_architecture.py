"""The chapter-6 checks fail on a stub and on plausible wrong answers, and pass on the solution."""

import pytest
import torch

from nanogpt_core.classroom.checks import CheckFailed
from nanogpt_core.classroom.checks.architecture import check_rms_norm, check_rope, check_value_embedding_mix


def stub(*args):
    raise NotImplementedError


# ---- RoPE


def rope_solution(x, cos, sin):
    d = x.size(-1) // 2
    a, b = x[..., :d], x[..., d:]
    return torch.cat([a * cos + b * sin, -a * sin + b * cos], dim=-1)


def rope_interleaved(x, cos, sin):  # pairs (0, 1), (2, 3), ...: the other common convention
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * cos + b * sin, -a * sin + b * cos], dim=-1).flatten(-2)


def rope_other_direction(x, cos, sin):  # rotates the other way
    d = x.size(-1) // 2
    a, b = x[..., :d], x[..., d:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


def rope_float32(x, cos, sin):  # right values, but always float32
    return rope_solution(x.float(), cos, sin)


@pytest.mark.parametrize("wrong", [stub, rope_interleaved, rope_other_direction, rope_float32])
def test_rope_check_rejects(wrong):
    with pytest.raises(CheckFailed):
        check_rope(wrong)


def test_rope_check_accepts_the_solution():
    assert check_rope(rope_solution)


# ---- RMSNorm


def rms_solution(x):
    eps = torch.finfo(x.dtype).eps
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def rms_no_sqrt(x):
    return x / (x.pow(2).mean(-1, keepdim=True) + 1e-6)


def rms_layernorm(x):  # subtracts the mean: that is LayerNorm
    return torch.nn.functional.layer_norm(x, (x.size(-1),))


def rms_big_eps(x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)


def rms_wrong_dim(x):
    return x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + torch.finfo(x.dtype).eps)


@pytest.mark.parametrize("wrong", [stub, rms_no_sqrt, rms_layernorm, rms_big_eps, rms_wrong_dim])
def test_rms_norm_check_rejects(wrong):
    with pytest.raises(CheckFailed):
        check_rms_norm(wrong)


def test_rms_norm_check_accepts_the_solution():
    assert check_rms_norm(rms_solution)


# ---- value-embedding mix


def mix_solution(v, ve, gate_logits):
    return v + 2 * torch.sigmoid(gate_logits)[..., None] * ve


def mix_without_factor_two(v, ve, gate_logits):  # starts at 0.5, not 1.0
    return v + torch.sigmoid(gate_logits)[..., None] * ve


def mix_replaces_v(v, ve, gate_logits):
    return 2 * torch.sigmoid(gate_logits)[..., None] * ve


def mix_gate_over_wrong_axis(v, ve, gate_logits):  # broadcasts the gate over the head dim instead
    return v + 2 * torch.sigmoid(gate_logits).mean(-1)[..., None, None] * ve


@pytest.mark.parametrize("wrong", [stub, mix_without_factor_two, mix_replaces_v, mix_gate_over_wrong_axis])
def test_value_embedding_mix_check_rejects(wrong):
    with pytest.raises(CheckFailed):
        check_value_embedding_mix(wrong)


def test_value_embedding_mix_check_accepts_the_solution():
    assert check_value_embedding_mix(mix_solution)


def test_messages_say_what_is_wrong_without_the_answer():
    with pytest.raises(CheckFailed, match="not implemented yet"):
        check_rope(stub)
    with pytest.raises(CheckFailed, match="dtype torch.float32, expected torch.float64"):
        check_rope(rope_float32)
    with pytest.raises(CheckFailed, match="case 'x .* scaled by 1e-3"):
        check_rms_norm(rms_big_eps)
