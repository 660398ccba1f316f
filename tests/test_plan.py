"""The dry-run planner against nanochat's published run-1 figures (speedrun-facts.md)."""

import subprocess
import sys

import pytest

from nanogpt_core.config import STAGE_SWITCHES, stage_config
from nanogpt_core.plan import make_plan, memory_per_gpu, meta_model

needs_full_ladder = pytest.mark.skipif(
    any(s not in STAGE_SWITCHES for s in ("modern-block", "value-embeddings", "bos-loader", "packing")),
    reason="the speedrun stages are not built yet",
)


@needs_full_ladder
def test_parameter_counts_match_nanochat_run1():
    plan = make_plan("speedrun", "packing", gpus=8)
    assert plan.params["total"] == pytest.approx(1.384e9, rel=0.01)
    assert plan.params["scaling"] == pytest.approx(729.8e6, rel=0.01)
    assert plan.params["value_embeddings"] == pytest.approx(604e6, rel=0.01)


@needs_full_ladder
def test_flops_per_token_match_nanochat_run1_with_half_seq_windows():
    plan = make_plan("speedrun", "packing", gpus=8)
    assert stage_config("packing", "speedrun").model.short_window == 0.5  # run 1: short window = seq/2
    assert plan.flops_per_token == pytest.approx(4.945e9, rel=0.02)


@needs_full_ladder
def test_steps_time_and_cost_reproduce_run1():
    plan = make_plan("speedrun", "packing", gpus=8, gpu="h100", mfu=0.5, price=3.0)
    assert plan.steps == 16_704 and plan.grad_accum == 2 and plan.total_batch == 524_288
    assert plan.tokens == pytest.approx(8.76e9, rel=0.005)
    assert plan.hours == pytest.approx(3.04, abs=0.05)  # published: 3.04 h
    assert plan.dollars == pytest.approx(73, abs=2)  # published: ~$73
    assert plan.memory_gb["total"] < 80


def test_memory_estimate_follows_the_formula():
    cfg = stage_config("gpt2", "toy", n_layer=2, n_embd=64, n_head=2, seq_len=32, vocab_size=512)
    model = meta_model(cfg)
    total = model.num_params()["total"]
    mem = memory_per_gpu(model, micro_batch=4, world_size=2, optimizer="adamw")
    assert mem["weights"] == mem["grads"] == pytest.approx(4 * total / 1e9)
    assert mem["optimizer"] == pytest.approx(8 * total / 2 / 1e9)  # AdamW only at gpt2: m and v, sharded over 2
    assert mem["activations"] == pytest.approx(4 * 32 * (2 * 64 * 30 + 512 * 4) / 1e9)
    assert mem["total"] == pytest.approx(sum(v for k, v in mem.items() if k != "total"))
    muon = memory_per_gpu(model, micro_batch=4, world_size=2, optimizer="muon")
    matrices = sum(b.attn.c_attn.weight.numel() + b.attn.c_proj.weight.numel() + b.mlp.c_fc.weight.numel()
                   + b.mlp.c_proj.weight.numel() for b in model.blocks)
    assert muon["optimizer"] == pytest.approx((8 * (total - matrices) + 4 * matrices) / 2 / 1e9)


def test_meta_model_allocates_nothing():
    model = meta_model(stage_config("gpt2", "speedrun"))
    assert all(p.is_meta for p in model.parameters())


def test_grad_accum_follows_the_gpu_count():
    assert make_plan("toy", "gpt2", gpus=1, total_batch=16 * 256 * 4).grad_accum == 4
    assert make_plan("toy", "gpt2", gpus=2, nodes=2, total_batch=16 * 256 * 4).grad_accum == 1
    with pytest.raises(ValueError, match="not a multiple"):
        make_plan("toy", "gpt2", gpus=3, total_batch=16 * 256 * 4)
    with pytest.raises(ValueError, match="gpu='tpu-v9' is unknown"):
        make_plan("toy", "gpt2", gpu="tpu-v9")


def test_more_gpus_less_time_same_cost():
    one = make_plan("toy", "gpt2", gpus=1, total_batch=16 * 256 * 8)
    eight = make_plan("toy", "gpt2", gpus=8, total_batch=16 * 256 * 8)
    assert eight.hours == pytest.approx(one.hours / 8)
    assert eight.dollars == pytest.approx(one.dollars)


def test_cli_prints_the_plan(tmp_path):
    out = subprocess.run([sys.executable, "-m", "nanogpt_core", "plan", "--scale", "toy", "--stage", "gpt2",
                          "--gpus", "2", "--nodes", "2", "--gpu", "a100", "--json", str(tmp_path / "p.json")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for text in ("parameters", "FLOPs per token", "steps", "memory per GPU", "time", "cost", "2 node(s) x 2 A100"):
        assert text in out.stdout
    assert (tmp_path / "p.json").exists()
