"""Attention backends agree with the naive reference; windows attend to exactly the right keys."""

import math

import pytest
import torch

from nanogpt_core import attention as A
from nanogpt_core import hardware
from nanogpt_core.config import ConfigError, ModelConfig, stage_config
from nanogpt_core.model import GPT

SHAPES = [(2, 3, 17, 8), (1, 2, 64, 16), (2, 4, 5, 8)]  # (B, H, T, D); T=5 is shorter than most windows
WINDOWS = [None, 0, 1, 4, 16, 100]


def qkv(shape, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(device=device, dtype=dtype).requires_grad_() for _ in range(3)]


def explicit_reference(q, k, v, window):
    """Attention one query at a time, keys chosen by the (left, 0) rule with plain Python ints."""
    B, H, T, D = q.shape
    out = torch.zeros_like(q)
    for i in range(T):
        lo = 0 if window is None else max(0, i - window)
        keys = slice(lo, i + 1)  # FA3's window_size=(window, 0): keys i - window .. i
        s = q[:, :, i : i + 1] @ k[:, :, keys].transpose(-2, -1) / math.sqrt(D)
        out[:, :, i : i + 1] = s.softmax(-1) @ v[:, :, keys]
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("window", WINDOWS)
def test_naive_matches_explicit_key_selection(shape, window):
    q, k, v = (t.detach() for t in qkv(shape, torch.float64))
    torch.testing.assert_close(A.naive_attention(q, k, v, window), explicit_reference(q, k, v, window))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("window", WINDOWS)
def test_sdpa_matches_naive_outputs_and_gradients(shape, window):
    q, k, v = qkv(shape)
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    y_ref, y = A.naive_attention(q, k, v, window), A.sdpa_attention(q2, k2, v2, window)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-4)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y.backward(g)
    for a, b in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("window", [None, 3])
def test_sdpa_bf16_within_bf16_tolerance(window):
    q, k, v = qkv((2, 2, 32, 16))
    y_ref = A.naive_attention(q, k, v, window)
    y = A.sdpa_attention(*(t.detach().bfloat16() for t in (q, k, v)), window)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref, atol=3e-2, rtol=3e-2)


def test_mask_off_by_one_matches_fa3_convention():
    # window w: query i sees exactly w + 1 keys (itself and w before it), fewer near the start
    T, w = 10, 3
    mask = A.sliding_window_mask(T, w)
    for i in range(T):
        assert mask[i].nonzero().flatten().tolist() == list(range(max(0, i - w), i + 1))
    assert mask.sum(1).tolist() == [min(i, w) + 1 for i in range(T)]
    # w >= T - 1 is plain causal attention; w = 0 is each token alone
    assert torch.equal(A.sliding_window_mask(T, T - 1), torch.ones(T, T, dtype=torch.bool).tril())
    assert torch.equal(A.sliding_window_mask(T, 0), torch.eye(T, dtype=torch.bool))


def test_window_changes_the_output_only_beyond_the_window():
    q, k, v = qkv((1, 1, 12, 4), torch.float64)
    full, windowed = A.naive_attention(q, k, v), A.naive_attention(q, k, v, 4)
    torch.testing.assert_close(windowed[:, :, :5], full[:, :, :5])  # rows 0..4 see all their keys anyway
    assert not torch.allclose(windowed[:, :, 5:], full[:, :, 5:])


def test_mask_is_cached_per_shape_window_device():
    a = A.cached_mask(32, 5, torch.device("cpu"))
    assert A.cached_mask(32, 5, torch.device("cpu")) is a
    assert A.cached_mask(32, 6, torch.device("cpu")) is not a


def test_causal_attention_dispatch_and_errors():
    q, k, v = qkv((1, 2, 8, 4))
    torch.testing.assert_close(A.causal_attention(q, k, v, "sdpa", 2), A.naive_attention(q, k, v, 2), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(A.causal_attention(q, k, v, "auto", 2), A.naive_attention(q, k, v, 2), atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="choose one of"):
        A.causal_attention(q, k, v, "flash9")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_fa3_request_on_cpu_says_why_and_falls_back(capsys):
    hardware._printed.clear()
    assert A.resolve_backend("fa3") == "sdpa"
    assert A.resolve_backend("auto") == "sdpa"
    out = capsys.readouterr().out
    assert "fa3 was asked for but cannot run (no CUDA GPU is visible); using sdpa instead" in out
    assert A.resolve_backend("fa3") == "sdpa" and capsys.readouterr().out == ""  # printed once
    kernel, reason = A.load_fa3()
    assert kernel is None and reason


def test_formula_compiles_faster_only_in_a_compiled_bf16_cpu_graph_with_short_rows(monkeypatch):
    short = torch.zeros(1, 1, A.COMPILED_FORMULA_MAX_T, 8, dtype=torch.bfloat16)
    long = torch.zeros(1, 1, A.COMPILED_FORMULA_MAX_T + 1, 8, dtype=torch.bfloat16)
    assert not A.formula_compiles_faster(short)  # eager
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert A.formula_compiles_faster(short)
    assert not A.formula_compiles_faster(long)
    assert not A.formula_compiles_faster(short.float())
    if torch.cuda.is_available():
        assert not A.formula_compiles_faster(short.cuda())


@pytest.mark.parametrize("window", [None, 12])
def test_auto_in_a_compiled_bf16_cpu_graph_runs_the_formula_and_matches_sdpa(monkeypatch, window):
    calls = {"naive": 0, "sdpa": 0}
    for name in calls:  # count trace-time calls: which kernel the compiled graph contains
        fn = getattr(A, f"{name}_attention")
        monkeypatch.setattr(A, f"{name}_attention", lambda *a, fn=fn, name=name: calls.__setitem__(name, calls[name] + 1) or fn(*a))
    q, k, v = qkv((2, 3, 48, 16))
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v: A.causal_attention(q, k, v, "auto", window), dynamic=False, fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = compiled(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert calls == {"naive": 1, "sdpa": 0}
    y_ref = A.sdpa_attention(q2, k2, v2, window)  # fp32, eager
    torch.testing.assert_close(y.float(), y_ref, atol=3e-2, rtol=3e-2)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    y.float().backward(g)
    y_ref.backward(g)
    for a, b in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(a.grad, b.grad, atol=5e-2, rtol=5e-2)
    calls.update(naive=0, sdpa=0)
    A.causal_attention(q2.detach(), k2.detach(), v2.detach(), "auto", window)  # eager: the fused kernel
    assert calls == {"naive": 0, "sdpa": 1}


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda_only
@pytest.mark.parametrize("T,window", [(128, None), (128, 32), (100, 31), (40, 64)])
def test_cuda_sdpa_bf16_matches_naive(T, window):
    # on a GPU, SDPA dispatches to flash / memory-efficient kernels that a CPU never runs
    q, k, v = qkv((2, 4, T, 64), torch.bfloat16, "cuda")
    q2, k2, v2 = (t.detach().float().requires_grad_() for t in (q, k, v))
    y, y_ref = A.sdpa_attention(q, k, v, window), A.naive_attention(q2, k2, v2, window)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref, atol=2e-2, rtol=2e-2)
    g = torch.randn_like(y_ref)
    y.backward(g.bfloat16())
    y_ref.backward(g)
    for a, b in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(a.grad.float(), b.grad, atol=5e-2, rtol=5e-2)


fa3_only = pytest.mark.skipif(A.load_fa3()[0] is None, reason=f"FA3 unavailable: {A.load_fa3()[1]}")


@fa3_only
@pytest.mark.parametrize("T,window", [(128, None), (128, 32), (100, 31), (40, 64)])
def test_fa3_matches_sdpa_and_naive(T, window):
    q, k, v = qkv((2, 4, T, 64), torch.bfloat16, "cuda")
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    y = A.fa3_attention(q, k, v, window)
    y_ref = A.naive_attention(*(t.float() for t in (q2, k2, v2)), window)
    torch.testing.assert_close(y.float(), y_ref, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(y.float(), A.sdpa_attention(q2, k2, v2, window).float(), atol=2e-2, rtol=2e-2)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g.float())
    for a, b in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(a.grad.float(), b.grad, atol=5e-2, rtol=5e-2)


@fa3_only
def test_fa3_window_attends_exactly_the_mask_keys():
    # one-hot values reveal which keys each query used: output[i, j] > 0 iff key j was attended
    T, w = 64, 7
    q = torch.zeros(1, 1, T, 64, device="cuda", dtype=torch.bfloat16)  # uniform scores
    k = torch.zeros_like(q)
    v = torch.eye(T, 64, device="cuda", dtype=torch.bfloat16)[None, None]
    used = A.fa3_attention(q, k, v, w)[0, 0] > 0
    assert torch.equal(used, A.sliding_window_mask(T, w, "cuda"))


# ---- windows per layer -------------------------------------------------------------------


def test_layer_windows_tiles_pattern_and_keeps_last_layer_long():
    cfg = ModelConfig(n_layer=6, seq_len=256, window_pattern="SSSL", short_window=0.5)
    assert A.layer_windows(cfg) == [128, 128, 128, 256, 128, 256]
    assert A.layer_windows(ModelConfig(n_layer=3, window_pattern="S", short_window=0.25)) == [64, 64, 256]
    assert A.layer_windows(ModelConfig(n_layer=4, window_pattern="l")) == [256] * 4  # case-insensitive
    assert A.layer_windows(ModelConfig(n_layer=1, window_pattern="SSSL")) == [256]


@pytest.mark.parametrize("pattern", ["", "SXL", "ssl ", "1"])
def test_bad_window_patterns_are_config_errors(pattern):
    with pytest.raises(ConfigError, match="window_pattern"):
        ModelConfig(window_pattern=pattern).validate()
    with pytest.raises(ConfigError, match="'S' \\(short"):
        A.layer_windows(ModelConfig(window_pattern=pattern))


def test_model_layers_get_their_windows_and_flops_count_them():
    cfg = stage_config("flash-attention", "toy").model
    model = GPT(cfg)
    assert [b.attn.window for b in model.blocks] == [128, 128, 128, 256]
    full = GPT(ModelConfig(**{**cfg.__dict__, "window_pattern": "L"}))
    d = cfg.n_head * cfg.head_dim
    assert full.flops_per_token() - model.flops_per_token() == 3 * 12 * d * (256 - 128)


def test_flash_attention_model_matches_naive_model_with_same_windows():
    cfg = ModelConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, seq_len=16, window_pattern="SL", short_window=0.25)
    torch.manual_seed(0)
    naive = GPT(cfg)
    fast = GPT(ModelConfig(**{**cfg.__dict__, "attn_backend": "auto"}))
    fast.load_state_dict(naive.state_dict())
    x = torch.randint(0, 64, (3, 16))
    torch.testing.assert_close(fast(x, x), naive(x, x), atol=1e-5, rtol=1e-5)
