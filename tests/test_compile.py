"""The `compile` stage: a compiled model computes what the eager one does; the stages train."""

import pytest
import torch

from nanogpt_core.config import ModelConfig, TrainConfig, stage_config
from nanogpt_core.compile import compile_model, eval_model
from nanogpt_core.model import GPT
from nanogpt_core.optim import build_optimizer
from nanogpt_core.train import train

TINY = dict(n_layer=2, n_head=2, n_embd=64, seq_len=64, batch_size=4, eval_tokens=512)


def test_compiled_model_matches_eager_loss_and_gradients():
    cfg = ModelConfig(vocab_size=128, n_layer=2, n_head=2, n_embd=32, seq_len=32,
                      attn_backend="sdpa", window_pattern="SL", short_window=0.25)
    torch.manual_seed(0)
    eager = GPT(cfg)
    compiled_copy = GPT(cfg)
    compiled_copy.load_state_dict(eager.state_dict())
    compiled = compile_model(compiled_copy)
    x = torch.randint(0, 128, (4, 32))
    y = torch.randint(0, 128, (4, 32))
    loss_e, loss_c = eager(x, y), compiled(x, y)
    torch.testing.assert_close(loss_c, loss_e, atol=1e-5, rtol=1e-5)
    loss_e.backward()
    loss_c.backward()
    for (name, a), b in zip(eager.named_parameters(), compiled_copy.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    assert eval_model(eager, compiled, torch.device("cpu")) is eager  # CPU evaluation stays eager


def test_compile_stage_switches_and_fused_adamw_matches_default():
    cfg = stage_config("compile", "toy")
    assert cfg.train.compile and cfg.train.bf16 == "auto" and cfg.model.attn_backend == "auto"
    assert cfg.model.window_pattern == "SSSL" and cfg.model.short_window == 0.5
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    twin = torch.nn.Linear(8, 8)
    twin.load_state_dict(model.state_dict())
    fused, default = build_optimizer(model, TrainConfig(compile=True)), build_optimizer(twin, TrainConfig())
    assert fused.defaults["fused"] and not default.defaults["fused"]
    for _ in range(3):
        x = torch.randn(4, 8)
        for m, opt in ((model, fused), (twin, default)):
            m(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    torch.testing.assert_close(model.weight, twin.weight, atol=1e-6, rtol=1e-5)


def test_flash_attention_and_compile_stages_train():
    results = {}
    for stage in ("flash-attention", "compile"):
        cfg = stage_config(stage, "toy", steps=12, warmup_steps=2, eval_every=0, lr=3e-3, **TINY)
        _, r = train(cfg, progress=False)
        results[stage] = r
        assert r.steps == 12 and len(r.step_seconds) == 12 and r.compile_seconds == r.step_seconds[0]
        assert abs(r.wall_seconds - sum(r.step_seconds[1:])) < 1e-6
        assert sum(r.losses[-3:]) < sum(r.losses[:3]), f"{stage}: loss did not fall: {r.losses}"
        assert r.final_val_bpb is not None
    # same init and data; bf16 changes the rounding only: the first loss agrees closely
    assert abs(results["compile"].losses[0] - results["flash-attention"].losses[0]) < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_compiled_bf16_model_matches_eager():
    # on a GPU Inductor writes Triton kernels and attention stays SDPA (or FA3) inside the graph
    cfg = ModelConfig(vocab_size=256, n_layer=2, n_head=2, n_embd=64, seq_len=64,
                      attn_backend="auto", window_pattern="SL", short_window=0.25)
    torch.manual_seed(0)
    eager = GPT(cfg).cuda()
    compiled_copy = GPT(cfg).cuda()
    compiled_copy.load_state_dict(eager.state_dict())
    compiled = compile_model(compiled_copy)
    x, y = (torch.randint(0, 256, (4, 64), device="cuda") for _ in range(2))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss_e, loss_c = eager(x, y), compiled(x, y)
    torch.testing.assert_close(loss_c, loss_e, atol=2e-2, rtol=1e-2)
    loss_e.backward()
    loss_c.backward()
    for (name, a), b in zip(eager.named_parameters(), compiled_copy.parameters()):
        # bf16 rounds differently in fused kernels: compare each gradient as a whole
        assert (b.grad - a.grad).norm() <= 0.05 * a.grad.norm() + 1e-6, name
    assert eval_model(eager, compiled, torch.device("cuda")) is compiled
