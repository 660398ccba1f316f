"""The speedrun's block (stages `modern-block` and `value-embeddings`), one switch at a time."""

import math

import pytest
import torch

from nanogpt_core.lab.ablation import ARCHITECTURE_VARIANTS, bpb_at_time, summarize
from nanogpt_core.config import STAGES, ModelConfig, stage_config
from nanogpt_core.model import (
    GPT,
    apply_rotary,
    has_value_embedding,
    mix_value_embedding,
    rms_norm,
    rotary_tables,
    softcap,
)

MODERN = STAGES["modern-block"].switches
SMALL = dict(vocab_size=64, n_layer=3, n_head=2, n_embd=16, seq_len=8)


def small_model(seed=0, **switches):
    torch.manual_seed(seed)
    return GPT(ModelConfig(**{**SMALL, **switches}))


# ---- GPT-2 is untouched when the switches are off -----------------------------------------------


def test_gpt2_defaults_are_unchanged():
    """Parameter count and logits of a seeded GPT-2 config, recorded before the switches existed."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=16, seq_len=8))
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    out = model(idx)
    assert model.num_params()["total"] == 7744
    expected = torch.tensor([0.04912250488996506, 0.0036664523649960756, -0.03098600171506405, -0.04892805218696594])
    assert torch.allclose(out[0, 0, :4], expected, atol=1e-6)
    assert out.sum().item() == pytest.approx(3.674802780151367, abs=1e-4)


# ---- RoPE ---------------------------------------------------------------------------------------


def test_rotary_tables_follow_the_formula():
    cos, sin = rotary_tables(seq_len=5, head_dim=8, base=10_000.0)
    assert cos.shape == sin.shape == (5, 4)
    t, i = 3, 2
    angle = t * 10_000.0 ** (-2 * i / 8)
    assert cos[t, i].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert sin[t, i].item() == pytest.approx(math.sin(angle), abs=1e-6)


def test_rope_rotates_the_half_split_pairs():
    """Channel i pairs with i + D/2: (x_i, x_{i+D/2}) -> (x_i c + x_{i+D/2} s, -x_i s + x_{i+D/2} c)."""
    x = torch.randn(1, 1, 4, 6)
    cos, sin = rotary_tables(4, 6)
    y = apply_rotary(x, cos, sin)
    for t in range(4):
        for i in range(3):
            c, s = cos[t, i], sin[t, i]
            a, b = x[0, 0, t, i], x[0, 0, t, i + 3]
            assert torch.allclose(y[0, 0, t, i], a * c + b * s, atol=1e-6)
            assert torch.allclose(y[0, 0, t, i + 3], -a * s + b * c, atol=1e-6)


def test_rope_preserves_norms():
    x = torch.randn(2, 3, 16, 8)
    y = apply_rotary(x, *rotary_tables(16, 8))
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    """The same q and k placed at (t, s) and at (t + shift, s + shift) give the same score."""
    cos, sin = rotary_tables(64, 16)
    q, k = torch.randn(16), torch.randn(16)

    def score(t, s):
        qt = apply_rotary(q.expand(64, 16), cos, sin)[t]
        ks = apply_rotary(k.expand(64, 16), cos, sin)[s]
        return (qt @ ks).item()

    for t, s in [(5, 2), (10, 10), (40, 3)]:
        for shift in (1, 7, 20):
            assert score(t + shift, s + shift) == pytest.approx(score(t, s), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)  # but it does depend on the distance


def test_rope_model_has_no_position_table_and_is_causal():
    model = small_model(pos_emb="rope").eval()
    assert model.wpe is None and model.num_params()["position_embedding"] == 0
    idx = torch.randint(0, 64, (1, 8))
    changed = idx.clone()
    changed[0, 5] = (idx[0, 5] + 1) % 64
    a, b = model(idx), model(changed)
    assert torch.allclose(a[0, :5], b[0, :5], atol=1e-6) and not torch.allclose(a[0, 5:], b[0, 5:])


# ---- norms, MLP, softcap ------------------------------------------------------------------------------


def test_rms_norm_matches_its_formula():
    x = torch.randn(4, 7, 32) * 3 + 1
    eps = torch.finfo(x.dtype).eps
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    assert torch.allclose(rms_norm(x), expected, atol=1e-6)
    assert torch.allclose(rms_norm(x).pow(2).mean(-1), torch.ones(4, 7), atol=1e-5)


def test_rmsnorm_switch_removes_the_norm_parameters_and_normalizes_the_embedding():
    ln, rms = small_model(), small_model(norm="rmsnorm")
    assert not any("ln_" in n for n, _ in rms.named_parameters())
    n_norms = 2 * SMALL["n_layer"] + 1
    assert ln.num_params()["total"] - rms.num_params()["total"] == n_norms * 2 * SMALL["n_embd"]
    seen = {}
    rms.blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    rms(torch.randint(0, 64, (2, 8)))
    assert torch.allclose(seen["x"].pow(2).mean(-1), torch.ones(2, 8), atol=1e-3)  # block 0 gets norm(E[x]) (eps aside)


def test_qk_norm_normalizes_each_head_after_rope():
    model = small_model(qk_norm=True, pos_emb="rope")
    captured = {}
    import nanogpt_core.model as M

    original = M.causal_attention

    def spy(q, k, v, **kw):
        captured["q"], captured["k"] = q, k
        return original(q, k, v, **kw)

    M.causal_attention = spy
    try:
        model(torch.randint(0, 64, (2, 8)))
    finally:
        M.causal_attention = original
    for t in (captured["q"], captured["k"]):
        assert torch.allclose(t.pow(2).mean(-1), torch.ones(t.shape[:-1]), atol=1e-3)


def test_relu2_mlp():
    model = small_model(mlp="relu2")
    mlp = model.blocks[0].mlp
    x = torch.randn(3, 16)
    expected = mlp.c_proj(torch.relu(mlp.c_fc(x)) ** 2)
    assert torch.allclose(mlp(x), expected, atol=1e-6)


def test_softcap_bounds_the_logits_and_is_near_identity_for_small_values():
    z = torch.linspace(-1000, 1000, 101)
    assert softcap(z, 15.0).abs().max() <= 15.0
    small = torch.linspace(-0.5, 0.5, 11)
    assert torch.allclose(softcap(small, 15.0), small, atol=1e-3)
    model = small_model(logit_softcap=2.0)
    with torch.no_grad():
        model.lm_head.weight.mul_(1000)  # huge raw logits
    logits = model(torch.randint(0, 64, (2, 8)))
    assert logits.dtype == torch.float32 and logits.abs().max() <= 2.0


def test_no_bias_and_untied_head():
    model = small_model(bias=False, tie_embeddings=False)
    assert not any(n.endswith("bias") for n, _ in model.named_parameters())
    assert model.lm_head.weight is not model.wte.weight


# ---- init ------------------------------------------------------------------------------------------


def test_speedrun_init():
    model = small_model(**MODERN)
    d = SMALL["n_embd"]
    for block in model.blocks:
        assert block.attn.c_proj.weight.abs().max() == 0 and block.mlp.c_proj.weight.abs().max() == 0
        w = block.attn.c_attn.weight
        assert w.abs().max() <= math.sqrt(3 / d) + 1e-6  # uniform, bound sqrt(3/d) -> std 1/sqrt(d)
    assert model.lm_head.weight.std().item() == pytest.approx(0.001, rel=0.1)
    assert model.wte.weight.std().item() == pytest.approx(1.0, rel=0.1)
    # every block starts as the identity, so the logits are the head applied to norm(E[x])
    idx = torch.randint(0, 64, (2, 8))
    expected = model.lm_head(rms_norm(rms_norm(model.wte(idx))))
    assert torch.allclose(model(idx), softcap(expected, 15.0), atol=1e-5)


# ---- value embeddings and residual scalars -----------------------------------------------------------


@pytest.mark.parametrize("n_layer, layers", [(1, [0]), (2, [1]), (4, [1, 3]), (5, [0, 2, 4]), (12, [1, 3, 5, 7, 9, 11])])
def test_value_embedding_layers_alternate_and_include_the_last(n_layer, layers):
    assert [i for i in range(n_layer) if has_value_embedding(i, n_layer)] == layers
    model = GPT(ModelConfig(**{**SMALL, "n_layer": n_layer, "value_embeds": True}))
    assert sorted(int(k) for k in model.value_embeds) == layers
    assert [i for i, b in enumerate(model.blocks) if hasattr(b.attn, "ve_gate")] == layers
    assert all(isinstance(t, torch.nn.Embedding) for t in model.value_embeds.values())


def test_value_embedding_gate_starts_at_one():
    v, ve = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)
    assert torch.allclose(mix_value_embedding(v, ve, torch.zeros(2, 5, 3)), v + ve)
    gate = torch.tensor([-30.0, 0.0, 30.0]).expand(2, 5, 3)  # closed, neutral, fully open: 0, 1, 2
    out = mix_value_embedding(v, ve, gate)
    assert torch.allclose(out[..., 0, :], v[..., 0, :], atol=1e-6)
    assert torch.allclose(out[..., 2, :], v[..., 2, :] + 2 * ve[..., 2, :], atol=1e-5)
    model = small_model(value_embeds=True)
    assert all(b.attn.ve_gate.weight.abs().max() == 0 for b in model.blocks if hasattr(b.attn, "ve_gate"))


def test_value_embedding_reaches_the_values():
    """Zeroing a layer's value table changes the output (the path is wired), gradients reach it."""
    model = small_model(value_embeds=True, zero_init_proj=False)
    idx = torch.randint(0, 64, (2, 8))
    loss = model(idx, idx)
    loss.backward()
    for table in model.value_embeds.values():
        assert table.weight.grad is not None and table.weight.grad.abs().sum() > 0
    before = model(idx)
    with torch.no_grad():
        for table in model.value_embeds.values():
            table.weight.zero_()
    assert not torch.allclose(before, model(idx))


def test_residual_scalars_init_and_identity():
    with_scalars = small_model(seed=3, resid_scalars=True, norm="rmsnorm")
    assert torch.equal(with_scalars.resid_lambdas.data, torch.ones(3))
    assert torch.allclose(with_scalars.x0_lambdas.data, torch.full((3,), 0.1))
    # with l_resid = 1 and l_x0 = 0 the stage without the scalars comes back exactly
    without = small_model(seed=3, norm="rmsnorm")
    with_scalars.load_state_dict({**without.state_dict(), "resid_lambdas": torch.ones(3), "x0_lambdas": torch.zeros(3)})
    idx = torch.randint(0, 64, (2, 8))
    assert torch.allclose(with_scalars(idx), without(idx), atol=1e-6)
    with torch.no_grad():
        with_scalars.x0_lambdas.fill_(0.1)
    assert not torch.allclose(with_scalars(idx), without(idx))


def test_residual_scalars_follow_the_formula():
    """Before block i the stream is l_resid[i] * x + l_x0[i] * x0, x0 = norm(E[x])."""
    model = small_model(resid_scalars=True, norm="rmsnorm", pos_emb="rope")
    with torch.no_grad():
        model.resid_lambdas.copy_(torch.tensor([0.5, 2.0, 1.5]))
        model.x0_lambdas.copy_(torch.tensor([0.3, -0.2, 0.7]))
    ins, outs = [], []
    for b in model.blocks:
        b.register_forward_pre_hook(lambda m, args: ins.append(args[0]))
        b.register_forward_hook(lambda m, args, out: outs.append(out))
    idx = torch.randint(0, 64, (2, 8))
    model(idx)
    x0 = rms_norm(model.wte(idx))
    assert torch.allclose(ins[0], 0.5 * x0 + 0.3 * x0, atol=1e-5)
    assert torch.allclose(ins[1], 2.0 * outs[0] - 0.2 * x0, atol=1e-5)
    assert torch.allclose(ins[2], 1.5 * outs[1] + 0.7 * x0, atol=1e-5)


# ---- accounting ----------------------------------------------------------------------------------------


def test_parameter_counts_match_a_hand_count():
    L, d, V, T, H = 3, 16, 64, 8, 2
    model = small_model(**STAGES["modern-block"].switches, **STAGES["value-embeddings"].switches)
    n_ve = 2  # layers 0 and 2 of 3
    blocks = L * (3 * d * d + d * d + 4 * d * d + 4 * d * d)  # qkv, proj, fc, fc-proj; no biases, no norm params
    counts = model.num_params()
    assert counts["token_embedding"] == V * d
    assert counts["position_embedding"] == 0
    assert counts["value_embeddings"] == n_ve * V * d
    assert counts["embeddings"] == V * d + n_ve * V * d
    assert counts["scaling"] == blocks + V * d + n_ve * min(32, d) * H + 2 * L  # + head, gates, scalars
    assert counts["total"] == counts["embeddings"] + counts["scaling"] == sum(p.numel() for p in model.parameters())


def test_flops_exclude_embedding_lookups():
    """Value tables add parameters but no FLOPs; only the tiny gate matmuls count."""
    plain = small_model(**MODERN)
    with_ve = small_model(**MODERN, value_embeds=True)
    gates = 2 * min(32, SMALL["n_embd"]) * SMALL["n_head"]
    assert with_ve.flops_per_token() - plain.flops_per_token() == 6 * gates
    assert with_ve.num_params()["value_embeddings"] > 0


def test_stage_configs():
    cfg = stage_config("gpt2", "toy", **MODERN)
    assert cfg.model.pos_emb == "rope" and cfg.model.logit_softcap == 15.0 and not cfg.model.tie_embeddings
    assert STAGES["value-embeddings"].switches == dict(value_embeds=True, resid_scalars=True)


# ---- every switch trains --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [v for v in ARCHITECTURE_VARIANTS if v != "baseline"])
def test_every_switch_trains(variant, small_data, tiny_cfg):
    from nanogpt_core.train import train

    cfg = tiny_cfg.replace(**ARCHITECTURE_VARIANTS[variant], n_layer=2, steps=15, lr=3e-3)
    _, result = train(cfg, small_data, progress=False)
    assert all(math.isfinite(x) for x in result.losses)
    assert sum(result.losses[-3:]) / 3 < result.losses[0] - 0.15, result.losses


# ---- the ablation's bookkeeping ---------------------------------------------------------------------------


def test_ablation_summary_interpolates_and_pairs_seeds():
    def run(variant, seed, final, curve):
        return {"variant": variant, "seed": seed, "final_val_bpb": final, "wall_seconds": curve[-1][0],
                "tokens_per_second": 1.0, "val": [{"step": i, "seconds": s, "bpb": b} for i, (s, b) in enumerate(curve)]}

    runs = [
        run("baseline", 0, 3.0, [(0, 5.0), (10, 3.0)]),
        run("baseline", 1, 3.2, [(0, 5.0), (10, 3.2)]),
        run("x", 0, 2.0, [(0, 5.0), (20, 2.0)]),  # better per step, but twice as slow
        run("x", 1, 2.4, [(0, 5.0), (20, 2.4)]),
    ]
    assert bpb_at_time(runs[2], 10) == pytest.approx(3.5)
    s = summarize(runs)
    assert s["x"]["delta_equal_steps"] == pytest.approx(-0.9)
    assert s["x"]["seconds_equal_time"] == 10
    assert s["x"]["bpb_equal_time"] == pytest.approx((3.5 + 3.7) / 2)
    assert s["x"]["delta_equal_time"] == pytest.approx(((3.5 - 3.0) + (3.7 - 3.2)) / 2)
    with pytest.raises(ValueError, match="outside"):
        bpb_at_time(runs[0], 11)
