"""The chapter-6 checks fail on a stub and on plausible wrong answers, and pass on the solution; their
references are what the package's model computes."""

import math

import pytest
import torch
import torch.nn.functional as F

from nanogpt_core import model as M
from nanogpt_core.attention import causal_attention
from nanogpt_core.classroom.checks import CheckFailed
from nanogpt_core.classroom.checks.architecture import (
    check_qk_norm_logits, check_rope, check_value_embedding_gate, qk_norm_logits_reference, rope_reference,
    value_embedding_gate_reference,
)
from nanogpt_core.config import ModelConfig


def stub(*args):
    raise NotImplementedError


# ---- RoPE


def rope_solution(x, positions, base=10_000.0):
    D = x.size(-1)
    theta = base ** (-torch.arange(0, D, 2, dtype=torch.float32) / D)
    angle = positions.float()[:, None] * theta
    a, b = x[..., : D // 2], x[..., D // 2:]
    return torch.cat([a * angle.cos() + b * angle.sin(), b * angle.cos() - a * angle.sin()], -1).to(x.dtype)


def rope_adjacent_pairs(x, positions, base=10_000.0):  # pairs (0, 1), (2, 3), ...: the paper's convention, not the package's
    D = x.size(-1)
    angle = positions.float()[:, None] * base ** (-torch.arange(0, D, 2, dtype=torch.float32) / D)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([a * angle.cos() + b * angle.sin(), b * angle.cos() - a * angle.sin()], -1).flatten(-2).to(x.dtype)


def rope_sin_sign_flipped(x, positions, base=10_000.0):  # rotates the other way
    D = x.size(-1)
    angle = positions.float()[:, None] * base ** (-torch.arange(0, D, 2, dtype=torch.float32) / D)
    a, b = x[..., : D // 2], x[..., D // 2:]
    return torch.cat([a * angle.cos() - b * angle.sin(), b * angle.cos() + a * angle.sin()], -1).to(x.dtype)


def rope_frequency_without_two(x, positions, base=10_000.0):  # theta_i = base^(-i/D): frequencies fall too slowly
    D = x.size(-1)
    angle = positions.float()[:, None] * base ** (-torch.arange(0, D // 2, dtype=torch.float32) / D)
    a, b = x[..., : D // 2], x[..., D // 2:]
    return torch.cat([a * angle.cos() + b * angle.sin(), b * angle.cos() - a * angle.sin()], -1).to(x.dtype)


def rope_ignores_positions(x, positions, base=10_000.0):  # assumes the positions are 0..T-1
    return rope_solution(x, torch.arange(x.size(-2)), base)


def rope_float32(x, positions, base=10_000.0):  # right values, but always float32
    return rope_solution(x.float(), positions, base)


@pytest.mark.parametrize("wrong", [stub, rope_adjacent_pairs, rope_sin_sign_flipped, rope_frequency_without_two,
                                   rope_ignores_positions, rope_float32])
def test_rope_check_rejects(wrong):
    with pytest.raises(CheckFailed):
        check_rope(wrong)


def test_rope_check_accepts_the_solution_and_the_package():
    assert check_rope(rope_solution)
    with pytest.raises(CheckFailed, match="write it yourself"):  # the check's reference is the package's answer
        check_rope(rope_reference)


def test_rope_reference_is_what_the_model_does():
    cos, sin = M.rotary_tables(12, 16)
    x = torch.randn(2, 3, 12, 16)
    assert torch.equal(rope_reference(x, torch.arange(12)), M.apply_rotary(x, cos, sin))


# ---- QK-norm


def qk_solution(q, k):
    eps = torch.finfo(q.dtype).eps
    qn = q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + eps)
    kn = k / torch.sqrt(k.pow(2).mean(-1, keepdim=True) + eps)
    return qn @ kn.transpose(-2, -1) / math.sqrt(q.size(-1))


def qk_normalizes_over_positions(q, k):  # the norm over the wrong axis (the sequence, not the head channels)
    eps = torch.finfo(q.dtype).eps
    qn = q / torch.sqrt(q.pow(2).mean(-2, keepdim=True) + eps)
    kn = k / torch.sqrt(k.pow(2).mean(-2, keepdim=True) + eps)
    return qn @ kn.transpose(-2, -1) / math.sqrt(q.size(-1))


def qk_normalizes_over_heads(q, k):  # one rms over all heads of a position (the norm of the whole width)
    eps = torch.finfo(q.dtype).eps
    qn = q / torch.sqrt(q.pow(2).mean((-3, -1), keepdim=True) + eps)
    kn = k / torch.sqrt(k.pow(2).mean((-3, -1), keepdim=True) + eps)
    return qn @ kn.transpose(-2, -1) / math.sqrt(q.size(-1))


def qk_without_eps(q, k):
    qn = q / q.pow(2).mean(-1, keepdim=True).sqrt()
    kn = k / k.pow(2).mean(-1, keepdim=True).sqrt()
    return qn @ kn.transpose(-2, -1) / math.sqrt(q.size(-1))


def qk_without_scale(q, k):  # forgets the 1/sqrt(D) of attention
    eps = torch.finfo(q.dtype).eps
    qn = q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + eps)
    kn = k / torch.sqrt(k.pow(2).mean(-1, keepdim=True) + eps)
    return qn @ kn.transpose(-2, -1)


def qk_unit_norm(q, k):  # F.normalize: unit L2 norm instead of unit rms (a factor D smaller)
    return F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) / math.sqrt(q.size(-1))


def qk_layernorm(q, k):  # subtracts the mean: LayerNorm, not RMSNorm
    qn, kn = F.layer_norm(q, (q.size(-1),)), F.layer_norm(k, (k.size(-1),))
    return qn @ kn.transpose(-2, -1) / math.sqrt(q.size(-1))


@pytest.mark.parametrize("wrong", [stub, qk_normalizes_over_positions, qk_normalizes_over_heads, qk_without_eps,
                                   qk_without_scale, qk_unit_norm, qk_layernorm])
def test_qk_norm_check_rejects(wrong):
    with pytest.raises(CheckFailed):
        check_qk_norm_logits(wrong)


def test_qk_norm_check_accepts_the_solution():
    assert check_qk_norm_logits(qk_solution)


def test_qk_norm_reference_is_what_the_model_attends_with():
    """Softmax of the reference logits, causally masked, times v = the model's attention with qk_norm."""
    q, k, v = (torch.randn(2, 4, 10, 16) * 5 for _ in range(3))
    logits = qk_norm_logits_reference(q, k).masked_fill(~torch.ones(10, 10, dtype=torch.bool).tril(), float("-inf"))
    expected = causal_attention(M.rms_norm(q), M.rms_norm(k), v, backend="naive")
    assert torch.allclose(logits.softmax(-1) @ v, expected, atol=1e-5)
    assert logits.isfinite().sum() == 2 * 4 * 55 and logits[logits.isfinite()].abs().max() <= math.sqrt(16) + 1e-4


# ---- the value-embedding gate


def gate_solution(x, v, ve, gate_weight):
    logits = x[..., : gate_weight.size(1)] @ gate_weight.T  # (B, T, H)
    return v + 2 * torch.sigmoid(logits)[..., None] * ve


def gate_not_squashed(x, v, ve, gate_weight):  # the raw logits used as the gate
    return v + 2 * (x[..., : gate_weight.size(1)] @ gate_weight.T)[..., None] * ve


def gate_without_factor_two(x, v, ve, gate_weight):  # the gate lies in (0, 1) and starts at 0.5
    return v + torch.sigmoid(x[..., : gate_weight.size(1)] @ gate_weight.T)[..., None] * ve


def gate_reads_the_last_channels(x, v, ve, gate_weight):
    return v + 2 * torch.sigmoid(x[..., -gate_weight.size(1):] @ gate_weight.T)[..., None] * ve


def gate_tanh(x, v, ve, gate_weight):  # 1 + tanh: also (0, 2) and 1 at zero, but steeper than 2 sigmoid
    return v + (1 + torch.tanh(x[..., : gate_weight.size(1)] @ gate_weight.T))[..., None] * ve


def gate_replaces_v(x, v, ve, gate_weight):
    return 2 * torch.sigmoid(x[..., : gate_weight.size(1)] @ gate_weight.T)[..., None] * ve


@pytest.mark.parametrize("wrong", [stub, gate_not_squashed, gate_without_factor_two, gate_reads_the_last_channels,
                                   gate_tanh, gate_replaces_v])
def test_value_embedding_gate_check_rejects(wrong):
    with pytest.raises(CheckFailed):
        check_value_embedding_gate(wrong)


def test_value_embedding_gate_check_accepts_the_solution():
    assert check_value_embedding_gate(gate_solution)


def test_value_embedding_gate_reference_is_what_the_attention_layer_does(monkeypatch):
    """The gate logits the model passes to mix_value_embedding are those the reference computes from x."""
    cfg = ModelConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=64, seq_len=16, value_embeds=True)
    attn = M.CausalSelfAttention(cfg, layer_idx=1)
    torch.nn.init.normal_(attn.ve_gate.weight)
    seen, mix = {}, M.mix_value_embedding

    def spy(v, ve, gate_logits):
        seen.update(v=v, ve=ve, out=mix(v, ve, gate_logits))
        return seen["out"]

    monkeypatch.setattr(M, "mix_value_embedding", spy)
    x, ve = torch.randn(3, 16, 64), torch.randn(3, 16, 64)
    attn(x, None, ve)
    expected = value_embedding_gate_reference(x, seen["v"], seen["ve"], attn.ve_gate.weight)
    assert torch.allclose(seen["out"], expected, atol=1e-6)


# ---- messages


def test_messages_say_what_is_wrong_without_the_answer():
    with pytest.raises(CheckFailed, match="not implemented yet"):
        check_rope(stub)
    with pytest.raises(CheckFailed, match="dtype torch.float32, expected torch.float64"):
        check_rope(rope_float32)
    with pytest.raises(CheckFailed, match="odd positions"):
        check_rope(rope_ignores_positions)
    with pytest.raises(CheckFailed, match="one key is exactly zero.*NaN"):
        check_qk_norm_logits(qk_without_eps)
    with pytest.raises(CheckFailed, match="gate weights all zero"):
        check_value_embedding_gate(gate_not_squashed)
