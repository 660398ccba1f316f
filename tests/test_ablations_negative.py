"""The negative-result variants of chapter 10 against simple references."""

import pytest
import torch
import torch.nn.functional as F

from nanogpt_core.config import stage_config
from nanogpt_core.lab.ablations_negative import (
    RECIPE,
    HalfRopeGPT,
    SwiGLU,
    SwiGLUGPT,
    half_truncated_rotary_tables,
    run_negative_ablations,
    swiglu_hidden,
)
from nanogpt_core.model import GPT, apply_rotary


def test_swiglu_matches_the_formula():
    cfg = stage_config("modern-block", "toy", n_embd=48, n_head=2).model
    mlp = SwiGLU(cfg)
    x = torch.randn(2, 5, 48)
    h = swiglu_hidden(48)
    wg, wu = mlp.c_fc.weight[:h], mlp.c_fc.weight[h:]
    expected = (F.silu(x @ wg.T) * (x @ wu.T)) @ mlp.c_proj.weight.T
    assert torch.allclose(mlp(x), expected, atol=1e-5)


def test_swiglu_model_has_relu2s_weights_and_flops():
    cfg = stage_config("value-embeddings", "toy").model
    base, swiglu = GPT(cfg), SwiGLUGPT(cfg)
    assert swiglu.num_params()["scaling"] == pytest.approx(base.num_params()["scaling"], rel=0.01)
    assert swiglu.flops_per_token() == pytest.approx(base.flops_per_token(), rel=0.01)
    assert all(isinstance(b.mlp, SwiGLU) for b in swiglu.blocks)
    assert all((b.mlp.c_proj.weight == 0).all() for b in swiglu.blocks)  # the recipe's zero-init projections


def test_swiglu_width_is_nanochats():
    assert swiglu_hidden(768) == 2048 and swiglu_hidden(256) == 682  # (8 * n_embd) // 3, nanochat dev/LOG.md 2026-02-05


def test_half_truncated_rope_is_modded_nanogpts_record_17():
    """(1/1024) ** linspace(0, 1, D/4) for the first D/4 pairs, then D/4 zeros (records/.../2024-12-17_SparsifyEmbeds)."""
    T, D = 16, 8
    cos, sin = half_truncated_rotary_tables(T, D)
    assert cos.shape == sin.shape == (T, D // 2) and cos.dtype == torch.float32
    inv_freq = torch.cat([(1 / 1024) ** torch.linspace(0.0, 1.0, D // 4), torch.zeros(D // 4)])
    theta = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)
    assert torch.allclose(cos, theta.cos()) and torch.allclose(sin, theta.sin())
    assert torch.allclose(torch.atan2(sin[1, :2], cos[1, :2]), torch.tensor([1.0, 1 / 1024]))  # from 1 down to 1/1024
    assert (cos[:, 2:] == 1).all() and (sin[:, 2:] == 0).all()
    x = torch.randn(T, D)
    y = apply_rotary(x, cos, sin)
    untouched = [2, 3, 6, 7]  # pairs (i, i + D/2) for the zero frequencies i = 2, 3
    assert torch.allclose(y[:, untouched], x[:, untouched])
    assert not torch.allclose(y[1:, [0, 4]], x[1:, [0, 4]])
    model = HalfRopeGPT(stage_config("modern-block", "toy", n_layer=1, n_embd=32, n_head=2, seq_len=16).model)
    assert torch.equal(model.rope_cos, half_truncated_rotary_tables(16, 16)[0].bfloat16())  # kept in bf16, as run 1
    base = GPT(stage_config("modern-block", "toy", n_layer=1, n_embd=32, n_head=2, seq_len=16).model)
    assert not torch.equal(model.rope_cos, base.rope_cos)
    with pytest.raises(ValueError, match="pos_emb='rope'"):
        HalfRopeGPT(stage_config("gpt2", "toy").model)
    with pytest.raises(ValueError, match="divisible by 4"):
        half_truncated_rotary_tables(4, 6)


def test_ablation_runner_trains_every_variant(small_data):
    out = run_negative_ablations(steps=3, seeds=(0, 1), data=small_data, vocab_size=512, n_layer=1, n_embd=32,
                                 n_head=2, seq_len=32, batch_size=4, eval_tokens=512)
    assert set(out["summary"]) == {RECIPE, "swiglu, equal FLOPs", "half-truncated rope"} and out["baseline"] == RECIPE
    assert all(s["bpb"]["mean"] > 0 and s["bpb"]["n"] == 2 for s in out["summary"].values())
    for name, s in out["summary"].items():  # every variant paired with the recipe, seed by seed
        assert ("difference" in s) == (name != RECIPE)
        if name != RECIPE:
            assert len(s["difference"]["diffs"]) == 2 and s["difference"]["verdict"] in ("noise", "variant lower", "variant higher")
