"""The dry-run planner against nanochat's published run-1 figures (speedrun-facts.md)."""

import math
import subprocess
import sys

import pytest

from nanogpt_core.config import stage_config
from nanogpt_core.plan import make_plan, memory_per_gpu, meta_model

def test_parameter_counts_match_nanochat_run1():
    plan = make_plan("speedrun", "packing", gpus=8)
    assert plan.params["total"] == pytest.approx(1.384e9, rel=0.01)
    assert plan.params["scaling"] == pytest.approx(729.8e6, rel=0.01)
    assert plan.params["value_embeddings"] == pytest.approx(604e6, rel=0.01)


def test_flops_per_token_match_nanochat_run1_with_half_seq_windows():
    plan = make_plan("speedrun", "packing", gpus=8)
    assert stage_config("packing", "speedrun").model.short_window == 0.5  # run 1: short window = seq/2
    assert plan.flops_per_token == pytest.approx(4.945e9, rel=0.02)


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


def test_run1_data_needs_370_shards_with_run1s_val_shard():
    """runs/speedrun.sh at nanochat 348fbb3: ~35% of document tokens cropped by BestFit-Crop, so it
    downloads 370 shards (`-n 370`) and validates on the last one."""
    plan = make_plan("speedrun", "packing", gpus=8, gpu="h100")
    assert plan.crop_fraction == 0.35 and "speedrun.sh" in plan.crop_source
    assert plan.doc_tokens == pytest.approx(plan.tokens / 0.65, abs=1)
    assert plan.train_shards == 259  # 8.76e9 / 0.65 tokens x 4.8 chars / 250M chars per shard
    assert plan.shards == 370 and plan.val_shard == "shard_00369.parquet" and plan.disk_gb == pytest.approx(37)
    report = plan.report()
    for text in ("370 shards (~37 GB)", "download --shards 370", "shard_00369.parquet", "discards ~35%",
                 "predicted at an assumed 50% MFU", "training steps only", "--batch-size 16 --grad-accum 2 --steps 16704"):
        assert text in report, text


def test_data_needs_follow_the_loader_and_the_scale():
    stream = make_plan("speedrun", "value-embeddings", gpus=8)  # run 1's model on the plain stream: no cropping
    assert stream.crop_fraction == 0 and stream.train_shards == 169  # 8.76e9 x 4.8 / 250M: ~170 shards of text
    assert stream.shards == 370  # at speedrun scale: at least run 1's, so the val shard is run 1's
    gpu = make_plan("gpu", "packing", gpus=1)
    assert gpu.shards == math.ceil(gpu.train_shards * 1.1) + 1 < 100
    assert gpu.val_shard == f"shard_{gpu.shards - 1:05d}.parquet"


def test_speedrun_schedule_is_run1s():
    t = stage_config("packing", "speedrun").train
    assert (t.schedule, t.warmdown_frac, t.warmup_steps, t.final_lr_frac, t.grad_clip) == ("warmdown", 0.5, 0, 0.0, 0.0)
    assert stage_config("packing", "toy").train.warmdown_frac == 0.4  # the toy chapters' schedule is unchanged


def test_the_micro_batch_is_halved_until_it_fits_the_card():
    big = make_plan("speedrun", "packing", gpus=8, gpu="h100")
    assert big.micro_batch == 16 and big.micro_batch_note == ""
    small = make_plan("speedrun", "packing", gpus=8, gpu="rtx4090")
    assert small.micro_batch < 16 and small.memory_gb["total"] + 4 <= 24
    assert small.micro_batch * small.grad_accum == 16 * 2 and "do not fit 24 GB" in small.micro_batch_note
    assert make_plan("speedrun", "packing", gpus=8, gpu="rtx4090", micro_batch=16).micro_batch == 16  # given: kept


def test_one_gpu_and_two_node_commands():
    one = make_plan("gpu", "packing", gpus=1, gpu="h100")
    assert one.train_flags().startswith("python -m nanogpt_core train --stage packing --scale gpu")
    assert f"--grad-accum {one.grad_accum} --steps {one.steps}" in one.train_flags()
    two = make_plan("speedrun", "packing", gpus=8, nodes=2)
    assert two.grad_accum == 1 and two.world_size == 16
    flags = two.train_flags()
    for text in ("--nnodes=2", "--nproc_per_node=8", "--rdzv_backend=c10d", "--rdzv_endpoint=$HEAD_NODE_ADDR:29500",
                 "--grad-accum 1"):
        assert text in flags


def test_download_help_and_chapters_agree_with_the_plan():
    import json
    from pathlib import Path

    plan = make_plan("speedrun", "packing", gpus=8)
    assert (plan.shards, plan.val_shard) == (370, "shard_00369.parquet")
    out = subprocess.run([sys.executable, "-m", "nanogpt_core", "download", "--help"], capture_output=True, text=True,
                         timeout=120)
    help_text = " ".join(out.stdout.split())
    assert "downloaded 370" in help_text and "shard_00369" in help_text and "used 240" not in help_text
    chapters = Path(__file__).resolve().parents[1] / "chapters"

    def text(name):
        return " ".join("".join(c["source"]) for c in json.loads((chapters / name).read_text())["cells"])

    nine, one = text("09_the_full_run.ipynb"), text("01_tokens_and_bits.ipynb")
    assert f"download --shards {plan.shards}" in nine and "--shards 240" not in nine and "shard_00369" in nine
    assert "370" in one and "shard_00369" in one and "about 170 for the" not in one
