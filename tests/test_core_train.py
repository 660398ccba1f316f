import json
import subprocess
import sys

import pytest
import torch

from nanogpt_core.schedules import lr_multiplier
from nanogpt_core.checkpoint import load_checkpoint
from nanogpt_core.train import RunResult, train


def test_training_lowers_the_loss(small_data, tiny_cfg):
    _, result = train(tiny_cfg.replace(steps=30, eval_every=10), small_data, progress=False)
    assert result.steps == 30 and len(result.losses) == 30
    assert sum(result.losses[-5:]) / 5 < result.losses[0] - 0.5
    assert result.val[0]["bpb"] > result.final_val_bpb
    assert [v["step"] for v in result.val] == [0, 10, 20, 30]
    assert result.tokens == 30 * 8 * 32 and result.tokens_per_second > 0


def test_gradient_accumulation_equals_a_bigger_batch(small_data, tiny_cfg):
    """Two micro-batches of 4 give the same step as one batch of 8 built from the same rows."""
    from nanogpt_core.data import TokenStreamLoader
    from nanogpt_core.model import GPT
    from nanogpt_core.optim import build_optimizer

    torch.manual_seed(0)
    a = GPT(tiny_cfg.model)
    b = GPT(tiny_cfg.model)
    b.load_state_dict(a.state_dict())
    x, y = TokenStreamLoader(small_data.stream("train"), 8, 32, seed=1).next_batch()
    a(x, y).backward()
    for xs, ys in ((x[:4], y[:4]), (x[4:], y[4:])):
        (b(xs, ys) / 2).backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6)
    opt = build_optimizer(a, tiny_cfg.train)
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, tiny_cfg.train.weight_decay}


def test_resume_gives_the_same_next_losses(small_data, tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(steps=10)
    _, full = train(cfg, small_data, progress=False)
    ckpt = tmp_path / "run.pt"
    _, first = train(cfg, small_data, progress=False, checkpoint_path=ckpt, stop_after=6)
    assert first.steps == 6 and first.final_val_bpb is None
    assert load_checkpoint(ckpt)["step"] == 6
    _, resumed = train(cfg, small_data, progress=False, resume_from=ckpt)
    assert resumed.steps == 10
    assert resumed.losses == pytest.approx(full.losses, abs=1e-5)
    assert resumed.final_val_bpb == pytest.approx(full.final_val_bpb, abs=1e-5)


def test_checkpoint_write_is_atomic_and_corruption_is_reported(small_data, tiny_cfg, tmp_path):
    ckpt = tmp_path / "run.pt"
    train(tiny_cfg.replace(steps=2), small_data, progress=False, checkpoint_path=ckpt)
    assert ckpt.exists() and not (tmp_path / "run.pt.tmp").exists()
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(ckpt)


def test_vocab_mismatch_is_a_clear_error(small_data, tiny_cfg):
    with pytest.raises(ValueError, match="tokenizer has 512 tokens but vocab_size=1000"):
        train(tiny_cfg.replace(vocab_size=1000), small_data, progress=False)


@pytest.mark.parametrize("schedule", ["cosine", "warmdown"])
def test_lr_schedules(tiny_cfg, schedule):
    t = tiny_cfg.replace(steps=100, warmup_steps=10, schedule=schedule, final_lr_frac=0.1, warmdown_frac=0.4).train
    lrs = [lr_multiplier(s, 100, t) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1, abs=0.03)
    assert all(a >= b - 1e-12 for a, b in zip(lrs[10:], lrs[11:]))  # never increases after warmup
    if schedule == "warmdown":  # nanochat's base_train.py at 348fbb3, written out for N = 100, W = 40
        assert lrs[60] == 1.0 and lrs[61] == pytest.approx(0.1 + 0.9 * 39 / 40)
        assert lrs[99] == pytest.approx(0.1 + 0.9 / 40)


def test_cli_help_documents_every_flag():
    out = subprocess.run([sys.executable, "-m", "nanogpt_core", "train", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--stage", "--scale", "--steps", "--json", "--checkpoint", "--resume", "--lr", "--seed"):
        assert flag in out


def test_cli_trains_and_writes_json(tmp_path):
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "nanogpt_core", "train", "--stage", "gpt2", "--scale", "toy", "--steps", "3",
           "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--seq-len", "32", "--batch-size", "4",
           "--eval-tokens", "512", "--warmup-steps", "1", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = RunResult(**json.loads(out.read_text()))
    assert result.stage == "gpt2" and result.scale == "toy" and result.steps == 3
    assert result.config["model"]["n_layer"] == 1
    for key in ("hardware", "torch_version", "tokens", "wall_seconds", "tokens_per_second", "losses", "final_val_bpb"):
        assert getattr(result, key) not in (None, "", [])


def test_cli_bad_config_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "nanogpt_core", "train", "--scale", "toy", "--n-head", "3"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "n_head=3 does not divide n_embd=256" in proc.stderr
