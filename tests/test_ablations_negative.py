"""The negative-result variants of chapter 10 against simple references."""

import pytest
import torch
import torch.nn.functional as F

from nanogpt_core.lab.ablations_negative import (HalfRopeGPT, SwiGLU, SwiGLUGPT, run_negative_ablations, swiglu_hidden,
                                             truncated_rotary_tables)
from nanogpt_core.config import stage_config
from nanogpt_core.model import GPT, apply_rotary, rotary_tables


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


def test_half_truncated_rope_keeps_the_fast_half_and_leaves_the_rest_unrotated():
    cos, sin = truncated_rotary_tables(16, 8, keep=0.5)
    full_cos, full_sin = rotary_tables(16, 8)
    assert torch.equal(cos[:, :2], full_cos[:, :2]) and torch.equal(sin[:, :2], full_sin[:, :2])
    assert (cos[:, 2:] == 1).all() and (sin[:, 2:] == 0).all()
    x = torch.randn(16, 8)
    y = apply_rotary(x, cos, sin)
    untouched = [2, 3, 6, 7]  # pairs (i, i + D/2) for the zeroed frequencies i = 2, 3
    assert torch.allclose(y[:, untouched], x[:, untouched])
    model = HalfRopeGPT(stage_config("modern-block", "toy", n_layer=1, n_embd=32, n_head=2, seq_len=16).model)
    assert torch.equal(model.rope_cos, truncated_rotary_tables(16, 16)[0])
    with pytest.raises(ValueError, match="pos_emb='rope'"):
        HalfRopeGPT(stage_config("gpt2", "toy").model)


def test_ablation_runner_trains_every_variant(small_data):
    out = run_negative_ablations(steps=3, seeds=(0,), data=small_data, vocab_size=512, n_layer=1, n_embd=32,
                                 n_head=2, seq_len=32, batch_size=4, eval_tokens=512)
    assert set(out["summary"]) == {"relu2 (the recipe)", "swiglu, equal FLOPs", "half-truncated rope"}
    assert all(s["mean_bpb"] > 0 for s in out["summary"].values())
