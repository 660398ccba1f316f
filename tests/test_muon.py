"""Muon: orthogonalization against the exact SVD, the update against hand-written formulas,
the distributed path against the single-process one, and the parameter routing."""

import math

import pytest
import torch
from spawn import run_on_two_processes

from nanogpt_core.muon import (
    METHODS, Muon, cautious_weight_decay, newton_schulz_step, orthogonalize, singular_value_map,
)
from nanogpt_core.optim import MuonAdamW, build_muon_adamw, route_parameters
from nanogpt_core.schedules import momentum_at

SHAPES = [(48, 48), (24, 72), (72, 24), (3, 20, 36)]  # square, wide, tall, a stack


def polar_factor(G):
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    return U @ Vh


def with_spectrum(shape, low, high, generator):
    """A random matrix (or stack) whose singular values are log-uniform in [low, high]."""
    *batch, m, n = shape
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(*batch, m, k, generator=generator, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(*batch, n, k, generator=generator, dtype=torch.float64))
    s = torch.exp(torch.empty(*batch, k, dtype=torch.float64).uniform_(math.log(low), math.log(high), generator=generator))
    return (U * s.unsqueeze(-2)) @ V.mT


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", METHODS)
def test_singular_values_follow_the_scalar_polynomial(shape, method):
    # O keeps G's singular vectors; each singular value s/(safety*||G||_F) goes through p(s).
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    O = orthogonalize(G, method=method, dtype=torch.float64)
    s = torch.linalg.svdvals(G)
    safety = 1.02 if method == "polar_express" else 1.0
    expected = singular_value_map(s / (safety * G.norm(dim=(-2, -1)).unsqueeze(-1)), method)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    torch.testing.assert_close(O, (U * expected.unsqueeze(-2)) @ Vh, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method, band", [("polar_express", (0.84, 1.15)), ("newton_schulz", (0.67, 1.21))])
def test_singular_values_land_in_the_promised_band(shape, method, band):
    # Spectrum within a factor 10: after normalization every value is >= ~0.01, where both work.
    G = with_spectrum(shape, 0.1, 1.0, torch.Generator().manual_seed(1))
    O = orthogonalize(G, method=method, dtype=torch.float32).double()
    s = torch.linalg.svdvals(O)
    assert band[0] <= s.min() and s.max() <= band[1], (s.min().item(), s.max().item())
    # O is close to the exact polar factor U V^T (same singular vectors, values near 1)
    P = polar_factor(G)
    rel = (O - P).norm(dim=(-2, -1)) / P.norm(dim=(-2, -1))
    assert (rel < (0.12 if method == "polar_express" else 0.3)).all(), rel


@pytest.mark.parametrize("shape", SHAPES)
def test_polar_express_beats_newton_schulz_at_equal_steps(shape):
    # At the 5 steps both run (Polar Express's coefficients are optimal for the 5-step
    # composition; its intermediate iterates are not meant to be good on their own).
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    P = polar_factor(G)
    err = {m: (orthogonalize(G, 5, m, torch.float64) - P).norm().item() for m in METHODS}
    assert err["polar_express"] < 0.6 * err["newton_schulz"], err


def test_tall_matrices_iterate_on_the_small_gram_matrix():
    G = torch.randn(40, 8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(orthogonalize(G), orthogonalize(G.mT).mT)
    # one step on a wide X is a X + (b A + c A^2) X with the 8 x 8 Gram matrix A = X X^T
    X = G.mT / G.norm()
    A = X @ X.mT
    torch.testing.assert_close(newton_schulz_step(X, 1.5, -0.5, 0.25), 1.5 * X - 0.5 * A @ X + 0.25 * A @ A @ X)


def test_dtypes_and_bad_input():
    G = torch.randn(16, 24, generator=torch.Generator().manual_seed(0))
    assert orthogonalize(G).dtype == torch.float32  # fp32 on CPU by default
    O16 = orthogonalize(G, dtype=torch.bfloat16)
    assert O16.dtype == torch.bfloat16
    O32 = orthogonalize(G)
    # bf16 keeps ~3 significant digits and the 5-step iteration only lands singular values in a
    # band around 1, so compare whole matrices: the relative error is ~0.056 (max 0.085 over 200 seeds)
    assert (O16.float() - O32).norm() / O32.norm() < 0.1
    with pytest.raises(ValueError, match="matrix"):
        orthogonalize(torch.randn(5))
    with pytest.raises(ValueError, match="at most 5"):
        orthogonalize(G, steps=6)
    with pytest.raises(ValueError, match="method"):
        orthogonalize(G, method="svd")
    with pytest.raises(ValueError, match="AdamW"):
        Muon([torch.nn.Parameter(torch.zeros(4))])


def reference_muon(W, grads, lr, wd, total_steps, beta2=0.95, warmup=300, m0=0.85, m1=0.95):
    """The update of the module docstring, written out for one matrix, step by step."""
    W = W.clone().double()
    rows, cols = W.shape
    b = torch.zeros_like(W)
    v = torch.zeros(rows, 1) if rows >= cols else torch.zeros(1, cols)
    v = v.double()
    for t, g in enumerate(grads):
        g = g.double()
        beta = m0 + min(1, t / warmup) * (m1 - m0)
        b = beta * b + (1 - beta) * g
        nesterov = (1 - beta) * g + beta * b
        O = orthogonalize(nesterov, dtype=torch.float64)
        mean_sq = (O**2).mean(dim=1, keepdim=True) if rows >= cols else (O**2).mean(dim=0, keepdim=True)
        v = beta2 * v + (1 - beta2) * mean_sq
        N = O / v.sqrt()
        N = N * O.norm() / N.norm()
        lr_eff = lr * math.sqrt(max(1, rows / cols))
        wd_t = wd * (1 - t / total_steps)
        W = W - lr_eff * (N + wd_t * ((N * W) >= 0) * W)
    return W


@pytest.mark.parametrize("shape", [(12, 20), (20, 12), (16, 16)])
def test_single_matrix_update_matches_the_formulas(shape):
    gen = torch.Generator().manual_seed(4)
    W0 = torch.randn(*shape, generator=gen, dtype=torch.float64)
    grads = [torch.randn(*shape, generator=gen, dtype=torch.float64) for _ in range(4)]
    p = torch.nn.Parameter(W0.clone())
    opt = Muon([p], lr=0.05, weight_decay=0.3, dtype=torch.float64)
    for t, g in enumerate(grads):  # the loop's schedules, set on the group as apply_schedules does
        opt.param_groups[0].update(momentum=momentum_at(t, 0.85, 0.95, 3), weight_decay=0.3 * (1 - t / 10))
        p.grad = g.clone()
        opt.step()
    expected = reference_muon(W0, grads, lr=0.05, wd=0.3, total_steps=10, warmup=3)
    torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=1e-5)  # NorMuon's statistics are fp32


def test_plain_muon_is_an_orthogonalized_step():
    # no momentum, no NorMuon, no weight decay: W <- W - lr * sqrt(max(1, m/n)) * orth(G)
    W0, G = torch.randn(30, 10), torch.randn(30, 10)
    p = torch.nn.Parameter(W0.clone())
    p.grad = G.clone()
    Muon([p], lr=0.1, momentum=0.0, beta2=None).step()
    torch.testing.assert_close(p.detach(), W0 - 0.1 * math.sqrt(3) * orthogonalize(G))


def test_cautious_weight_decay_only_where_signs_agree():
    W = torch.tensor([[1.0, -1.0], [2.0, -2.0]])
    u = torch.tensor([[0.5, 0.5], [-0.5, -0.5]])
    # entries (0,0) and (1,1) agree in sign with the update: only they are decayed
    expected = torch.tensor([[1 - 0.1 * (0.5 + 0.5 * 1.0), -1 - 0.1 * 0.5], [2 + 0.1 * 0.5, -2 - 0.1 * (-0.5 - 0.5 * 2.0)]])
    torch.testing.assert_close(cautious_weight_decay(W, u, lr=0.1, wd=0.5), expected)


def test_the_loop_sets_every_schedule_in_one_place(tiny_cfg):
    """apply_schedules: every group's lr, and Muon's momentum and weight decay, at a step of N = 100."""
    from nanogpt_core.model import GPT
    from nanogpt_core.optim import build_optimizer
    from nanogpt_core.schedules import apply_schedules, lr_multiplier

    t = tiny_cfg.replace(optimizer="muon", schedule="warmdown", warmup_steps=0, grad_clip=0.0, steps=100).train
    opt = build_optimizer(GPT(tiny_cfg.model), t)
    muon = [g for g in opt.param_groups if g.get("kind") == "muon"]
    wd0 = muon[0]["initial_weight_decay"]
    assert muon and wd0 > 0
    for step, momentum in ((0, 0.85), (50, 0.85 + 0.1 * 50 / 300), (99, 0.85 + 0.1 * 99 / 300), (300, 0.95)):
        now = apply_schedules(opt, step, t)
        assert all(g["lr"] == pytest.approx(g["initial_lr"] * lr_multiplier(step, 100, t)) for g in opt.param_groups)
        assert now["muon_momentum"] == pytest.approx(momentum)
        assert all(g["momentum"] == pytest.approx(momentum) for g in muon)
        assert all(g["weight_decay"] == pytest.approx(wd0 * max(0.0, 1 - step / 100)) for g in muon), step
    # AdamW's groups keep their weight decay (0 in the speedrun recipe): only Muon's decays
    assert all(g["weight_decay"] == g["initial_weight_decay"] for g in opt.param_groups if g.get("kind") != "muon")


def test_q_k_and_v_are_orthogonalized_apart_as_run_1():
    """c_attn (3d x d) with matrix_shape (d, d) moves exactly as three separate (d, d) matrices
    (run 1's c_q, c_k, c_v) would; handed over whole, it does not (the defect this guards against)."""
    d, gen = 16, torch.Generator().manual_seed(11)
    W0 = torch.randn(3 * d, d, generator=gen) * 0.3
    grads = [torch.randn(3 * d, d, generator=gen) for _ in range(3)]
    fused_as_three = torch.nn.Parameter(W0.clone())
    whole = torch.nn.Parameter(W0.clone())
    apart = [torch.nn.Parameter(w.clone()) for w in W0.split(d)]
    optimizers = [Muon([fused_as_three], lr=0.05, weight_decay=0.5, matrix_shape=(d, d)),
                  Muon([whole], lr=0.05, weight_decay=0.5), Muon(apart, lr=0.05, weight_decay=0.5)]
    for g in grads:
        fused_as_three.grad, whole.grad = g.clone(), g.clone()
        for p, gi in zip(apart, g.split(d)):
            p.grad = gi.clone()
        for opt in optimizers:
            opt.step()
    torch.testing.assert_close(fused_as_three.detach(), torch.cat([p.detach() for p in apart]), atol=1e-6, rtol=1e-5)
    update_apart, update_whole = fused_as_three.detach() - W0, whole.detach() - W0
    assert (update_whole - update_apart).norm() > 0.3 * update_apart.norm()
    with pytest.raises(ValueError, match="does not tile"):
        Muon([torch.nn.Parameter(torch.zeros(10, 4))], matrix_shape=(3, 4))


# ---- routing -----------------------------------------------------------------------------------


def test_routing_puts_every_parameter_in_exactly_one_group(tiny_cfg):
    from nanogpt_core.model import GPT
    from nanogpt_core.optim import build_optimizer
    from nanogpt_core.schedules import apply_schedules

    cfg = tiny_cfg.replace(optimizer="muon")
    model = GPT(cfg.model)
    opt = build_optimizer(model, cfg.train)
    assert isinstance(opt, MuonAdamW)
    grouped = [p for g in opt.param_groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))
    roles = {g["role"]: g for g in opt.param_groups}
    assert model.lm_head.weight in roles["unembed"]["params"]  # tied to wte: the head's rate
    assert roles["position"]["lr"] == roles["unembed"]["lr"] and roles["position"]["params"] == [model.wpe.weight]
    muon_ids = {id(p) for g in opt.param_groups if g["role"] == "muon" for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in muon_ids) == (p.ndim == 2 and name.startswith("blocks.")), name
    qkv = [g for g in opt.param_groups if any(p is model.blocks[0].attn.c_attn.weight for p in g["params"])]
    assert qkv[0]["matrix_shape"] == (cfg.model.n_embd, cfg.model.n_embd)  # q, k and v apart
    apply_schedules(opt, cfg.train.steps - 1, cfg.train)
    assert all(g["lr"] < g["initial_lr"] for g in opt.param_groups)


def test_routing_of_the_speedrun_parameters_and_unknown_ones(tiny_cfg):
    from nanogpt_core.model import GPT

    cfg = tiny_cfg.replace(stage="value-embeddings", optimizer="muon", pos_emb="rope", norm="rmsnorm", bias=False,
                           tie_embeddings=False, value_embeds=True, resid_scalars=True)
    model = GPT(cfg.model)
    names = {id(p): n for n, p in model.named_parameters()}
    roles = {r: sorted(names[id(p)] for p in ps) for r, ps in route_parameters(model).items()}
    assert roles["unembed"] == ["lm_head.weight"] and roles["position"] == [] and roles["vector"] == []
    assert roles["embed"] == sorted(["wte.weight", *(f"value_embeds.{k}.weight" for k in model.value_embeds)])
    assert roles["x0_scalar"] == ["x0_lambdas"] and roles["resid_scalar"] == ["resid_lambdas"]
    assert roles["muon"] == sorted(n for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2)
    model.stray = torch.nn.Linear(8, 8)
    with pytest.raises(ValueError, match="stray.weight"):
        route_parameters(model)


def test_muon_stage_trains_and_resumes_its_optimizer_state(small_data, tiny_cfg):
    from nanogpt_core.model import GPT
    from nanogpt_core.train import train

    cfg = tiny_cfg.replace(optimizer="muon", schedule="warmdown", warmup_steps=0, grad_clip=0.0)
    _, result = train(cfg, small_data, progress=False)
    assert result.losses[-1] < result.losses[0] - 0.5
    model = GPT(cfg.model)
    opt = build_muon_adamw(model, cfg.train)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    clone_model = GPT(cfg.model)
    clone = build_muon_adamw(clone_model, cfg.train)
    clone.load_state_dict(opt.state_dict())
    muon, restored = opt.optimizers["muon"], clone.optimizers["muon"]
    for p, q in zip(muon.param_groups[0]["params"], restored.param_groups[0]["params"]):
        assert torch.equal(muon.state[p]["momentum_buffer"], restored.state[q]["momentum_buffer"])
        assert torch.equal(muon.state[p]["second_moment"], restored.state[q]["second_moment"])


# ---- distributed -------------------------------------------------------------------------------

SHAPES_DIST = [(8, 12)] * 3 + [(16, 8)] * 2 + [(12, 12)]  # 3 matrices: padded to 4 on 2 ranks


def _make_params_and_grads(seed=5, steps=3, world_size=2):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(*s, generator=gen) for s in SHAPES_DIST]
    grads = [[[torch.randn(*s, generator=gen) for s in SHAPES_DIST] for _ in range(world_size)] for _ in range(steps)]
    return params, grads


def _make_opt(params, **kw):
    groups = {}
    for p in params:
        groups.setdefault(tuple(p.shape), []).append(p)
    return Muon([dict(params=ps) for ps in groups.values()], lr=0.05, weight_decay=0.2, **kw)


def _distributed_worker(rank, world_size, out_path):
    torch.set_num_threads(1)
    init, grads = _make_params_and_grads(world_size=world_size)
    params = [torch.nn.Parameter(p.clone()) for p in init]
    opt = _make_opt(params)
    assert opt.world_size == world_size and len(opt.self_synced_params) == len(params)
    for step_grads in grads:
        for p, g in zip(params, step_grads[rank]):  # each rank: its half of the global batch
            p.grad = g.clone()
        opt.step()
    n_state = sum(1 for p in params if opt.state[p])
    if rank == 0:
        torch.save({"params": [p.detach() for p in params]}, out_path)
    torch.save(n_state, f"{out_path}.{rank}")


@pytest.mark.timeout(120)
def test_two_process_gloo_matches_single_process(tmp_path):
    out = tmp_path / "params.pt"
    run_on_two_processes(_distributed_worker, str(out))
    got = torch.load(out)["params"]

    init, grads = _make_params_and_grads()
    params = [torch.nn.Parameter(p.clone()) for p in init]
    opt = _make_opt(params, world_size=1)
    for step_grads in grads:
        for i, p in enumerate(params):  # the global batch's gradient is the mean of the ranks'
            p.grad = (step_grads[0][i] + step_grads[1][i]) / 2
        opt.step()
    for g, p in zip(got, params):
        torch.testing.assert_close(g, p.detach(), atol=1e-5, rtol=1e-5)
    # state is sharded: each rank holds state for the matrices it owns only (2+1+1 and 1+1+0)
    assert sorted(torch.load(f"{out}.{r}") for r in range(2)) == [2, 4]


# ---- sharded AdamW (the AdamW half of the speedrun's optimizer, distributed) -----------------

SHAPES_ADAM = [(8, 160), (3, 400), (16,), (64, 32)]  # sharded, rows not divisible by 2, small, sharded


def _adam_params_and_grads(seed=7, steps=3, world_size=2):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(*s, generator=gen) for s in SHAPES_ADAM]
    grads = [[[torch.randn(*s, generator=gen) for s in SHAPES_ADAM] for _ in range(world_size)] for _ in range(steps)]
    return params, grads


ADAM_KW = dict(lr=0.01, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)


def _sharded_adamw_worker(rank, world_size, out_path):
    from nanogpt_core.optim import ShardedAdamW

    torch.set_num_threads(1)
    init, grads = _adam_params_and_grads(world_size=world_size)
    params = [torch.nn.Parameter(p.clone()) for p in init]
    opt = ShardedAdamW(params, **ADAM_KW)
    assert opt.world_size == world_size and len(opt.self_synced_params) == len(params)
    for step_grads in grads:
        for p, g in zip(params, step_grads[rank]):
            p.grad = g.clone()
        opt.step()
    state_numel = [opt.state[p]["exp_avg"].numel() for p in params]
    torch.save({"params": [p.detach() for p in params], "state_numel": state_numel}, f"{out_path}.{rank}")


@pytest.mark.timeout(120)
def test_sharded_adamw_on_two_processes_matches_torch_adamw_on_one(tmp_path):
    out = tmp_path / "adam.pt"
    run_on_two_processes(_sharded_adamw_worker, str(out))
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]

    init, grads = _adam_params_and_grads()
    params = [torch.nn.Parameter(p.clone()) for p in init]
    ref = torch.optim.AdamW(params, **ADAM_KW)
    for step_grads in grads:
        for i, p in enumerate(params):
            p.grad = (step_grads[0][i] + step_grads[1][i]) / 2
        ref.step()
    for r in ranks:  # every process ends with the whole, identical parameters
        for got, want in zip(r["params"], params):
            torch.testing.assert_close(got, want.detach(), atol=1e-6, rtol=1e-5)
    # the moments of the two large, row-divisible parameters are split in half; the rest are whole
    full = [p.numel() for p in params]
    assert ranks[0]["state_numel"] == ranks[1]["state_numel"] == [full[0] // 2, full[1], full[2], full[3] // 2]


def test_sharded_adamw_on_one_process_is_torch_adamw():
    from nanogpt_core.optim import ShardedAdamW

    init, grads = _adam_params_and_grads(world_size=1)
    ours, ref = ([torch.nn.Parameter(p.clone()) for p in init] for _ in range(2))
    opt_ours, opt_ref = ShardedAdamW(ours, **ADAM_KW), torch.optim.AdamW(ref, **ADAM_KW)
    for step_grads in grads:
        for a, b, g in zip(ours, ref, step_grads[0]):
            a.grad, b.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_ref.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-7, rtol=1e-6)
    assert opt_ours.self_synced_params == []


def _routing_worker(rank, world_size, out_path):
    from nanogpt_core.config import stage_config
    from nanogpt_core.model import GPT
    from nanogpt_core.optim import ShardedAdamW

    cfg = stage_config("muon", "toy", n_layer=1, n_embd=32, n_head=2, seq_len=32, grad_clip=0.0)
    model = GPT(cfg.model)
    opt = build_muon_adamw(model, cfg.train)
    synced = {id(p) for p in opt.self_synced_params}
    torch.save({"adamw": type(opt.optimizers["adamw"]) is ShardedAdamW,
                "all_synced": synced == {id(p) for p in model.parameters()}}, f"{out_path}.{rank}")


@pytest.mark.timeout(120)
def test_distributed_speedrun_optimizer_shards_adamw_and_syncs_every_parameter(tmp_path):
    run_on_two_processes(_routing_worker, str(tmp_path / "r"))
    for r in range(2):
        assert torch.load(tmp_path / f"r.{r}") == {"adamw": True, "all_synced": True}
    from nanogpt_core.config import stage_config
    from nanogpt_core.model import GPT

    single = build_muon_adamw(GPT(stage_config("muon", "toy", n_layer=1).model), stage_config("muon", "toy").train)
    assert type(single.optimizers["adamw"]) is torch.optim.AdamW
