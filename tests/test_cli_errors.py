"""Every failure a user can cause ends the CLI with one line, ``error: ...``, and exit code 2.

Each case runs the real command line (``nanogpt_core.__main__.main``, in this process) on tiny
models, with FineWeb-style parquet shards, tokenizers and checkpoints written by the test; one
case also runs it as a subprocess. ``--debug`` adds the traceback.
"""

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanogpt_core.__main__ import main

TINY = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--seq-len", "32", "--batch-size", "2", "--steps", "2",
        "--eval-tokens", "256", "--warmup-steps", "1", "--eval-every", "0", "--compile", "off", "--bf16", "off",
        "--device", "cpu", "--quiet"]


def run(capsys, *argv) -> tuple[int, str]:
    """(exit code, stderr) of the CLI; stderr is checked to be one ``error:`` line."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return code, lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Shards (good, a corrupt train shard, a corrupt val shard, no `text` column), tokenizers
    (good, corrupt, incomplete) and checkpoints (toy and FineWeb, 2 steps; truncated; not one)."""
    from nanogpt_core.download import train_tokenizer_on_shards
    from nanogpt_core.tokenizer import save_tokenizer

    root = tmp_path_factory.mktemp("cli")
    words = "the of and to in a is that for it with as was on be by this are from".split()
    for folder in ("good", "bad_train", "bad_val", "no_text"):
        (root / folder).mkdir()
        for i in range(3):
            texts = [" ".join(words[(i + j + k) % len(words)] for k in range(40 + j % 30)) for j in range(100)]
            pq.write_table(pa.table({"text": texts}), root / folder / f"shard_{i:05d}.parquet")
    (root / "bad_train" / "shard_00000.parquet").write_bytes(b"not parquet" * 50)
    (root / "bad_val" / "shard_00002.parquet").write_bytes(b"PAR1" + b"\0" * 100)
    pq.write_table(pa.table({"body": ["a b c"] * 20}), root / "no_text" / "shard_00001.parquet")
    save_tokenizer(train_tokenizer_on_shards(root / "good", vocab_size=300), root / "tok.json")
    (root / "bad_tok.json").write_text('{"name": "x", "pattern": ')
    (root / "partial_tok.json").write_text('{"name": "x", "pattern": "."}')
    assert main(["train", *TINY, "--checkpoint", str(root / "toy.pt")]) == 0
    assert main(["train", *TINY, "--data", str(root / "good"), "--tokenizer", str(root / "tok.json"),
                 "--checkpoint", str(root / "fineweb.pt")]) == 0
    (root / "truncated.pt").write_bytes((root / "toy.pt").read_bytes()[:300])
    torch.save({"weights": torch.zeros(3)}, root / "foreign.pt")
    return root


# ---- data: tokenizer and shards ------------------------------------------------------------------


@pytest.mark.parametrize("tok, why", [("bad_tok.json", "JSONDecodeError"), ("partial_tok.json", "no 'mergeable_ranks'")])
def test_damaged_tokenizer(capsys, files, tok, why):
    _, line = run(capsys, "train", *TINY, "--data", files / "good", "--tokenizer", files / tok)
    assert f"{files / tok} is not a tokenizer JSON" in line and why in line and "write it again" in line


@pytest.mark.parametrize("folder, shard, why", [
    ("bad_train", "shard_00000.parquet", "is not a readable parquet file"),
    ("bad_val", "shard_00002.parquet", "is not a readable parquet file"),
    ("no_text", "shard_00001.parquet", "has no `text` column"),
])
def test_damaged_shards(capsys, files, folder, shard, why):
    _, line = run(capsys, "train", *TINY, "--data", files / folder, "--tokenizer", files / "tok.json")
    assert str(files / folder / shard) in line and why in line
    if folder != "bad_val":  # the tokenizer reads the train shards only
        _, line = run(capsys, "tokenizer", "--dir", files / folder, "--vocab", "300", "--out", files / "t.json")
        assert str(files / folder / shard) in line and why in line


def test_data_needs_its_tokenizer_and_a_folder(capsys, files):
    _, line = run(capsys, "train", *TINY, "--data", files / "good")
    assert "--data and --tokenizer go together" in line
    _, line = run(capsys, "train", *TINY, "--data", files / "nowhere", "--tokenizer", files / "tok.json")
    assert "no such folder" in line and "download" in line


# ---- checkpoints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "evaluate", "sample"])
def test_truncated_or_foreign_checkpoint(capsys, files, command):
    for name, why in (("truncated.pt", "is not a readable checkpoint"), ("foreign.pt", "not a checkpoint written by train")):
        args = ["train", *TINY, "--resume", files / name] if command == "train" else [
            command, "--checkpoint", files / name, "--device", "cpu"]
        _, line = run(capsys, *args)
        assert str(files / name) in line and why in line


def test_checkpoint_of_another_width(capsys, files):
    _, line = run(capsys, "train", *TINY, "--n-embd", "64", "--resume", files / "toy.pt")
    assert "is a different run" in line and "n_embd 32 -> 64" in line and "without --resume" in line


def test_gpt2_checkpoint_under_another_stage(capsys, files):
    _, line = run(capsys, "train", *TINY, "--stage", "muon", "--resume", files / "toy.pt")
    assert "stage 'gpt2' -> 'muon'" in line and "optimizer 'adamw' -> 'muon'" in line
    _, line = run(capsys, "train", *TINY, "--stage", "flash-attention", "--resume", files / "toy.pt")
    assert "stage 'gpt2' -> 'flash-attention'" in line and "attn_backend 'naive' -> 'auto'" in line


def test_resume_on_other_data(capsys, files):
    _, line = run(capsys, "train", *TINY, "--resume", files / "fineweb.pt")
    assert "vocab_size 300 -> 4096" in line and "data tokenizer" in line


def test_finished_run_resumed_with_fewer_or_the_same_steps(capsys, files):
    for steps in ("1", "2"):
        _, line = run(capsys, "train", *TINY, "--steps", steps, "--resume", files / "toy.pt")
        assert "finished run at step 2 of 2" in line and "--allow-longer-run" in line


def test_evaluate_with_another_tokenizer_or_half_the_data_flags(capsys, files):
    _, line = run(capsys, "evaluate", "--checkpoint", files / "toy.pt", "--data", files / "good",
                  "--tokenizer", files / "tok.json", "--device", "cpu")
    assert "vocabulary of 4096 tokens" in line and "has 300" in line
    _, line = run(capsys, "evaluate", "--checkpoint", files / "fineweb.pt", "--device", "cpu")  # toy data, 300 tokens too
    assert "trained with another tokenizer" in line
    _, line = run(capsys, "sample", "--checkpoint", files / "toy.pt", "--data", files / "good")
    assert "--data and --tokenizer go together" in line
    _, line = run(capsys, "sample", "--checkpoint", files / "toy.pt", "--tokens", "0", "--device", "cpu")
    assert "--tokens 0 must be at least 1" in line


# ---- values --------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")
def test_cuda_without_a_gpu(capsys, files):
    for args in (["train", *TINY, "--device", "cuda"], ["evaluate", "--checkpoint", files / "toy.pt", "--device", "cuda"]):
        _, line = run(capsys, *args)
        assert "device 'cuda' asks for a CUDA GPU" in line and "use device cpu or auto" in line
    _, line = run(capsys, "train", *TINY, "--device", "tpu")
    assert "'tpu' is not a device name" in line


def test_bad_speedrun_scale_is_an_error_line(capsys, monkeypatch):
    monkeypatch.setenv("SPEEDRUN_SCALE", "bogus")
    _, line = run(capsys, "train", *TINY)
    assert "SPEEDRUN_SCALE='bogus' is not allowed" in line and "'toy'" in line


@pytest.mark.parametrize("args, expected", [
    (["train", *TINY, "--stage", "bos-loader", "--seq-len", "1"], "seq_len=1"),
    (["train", *TINY, "--eval-tokens", "8"], "--eval-tokens 8 is less than one row of --seq-len 32"),
    (["train", *TINY, "--steps", "0"], "steps=0 must be > 0"),
    (["train", *TINY, "--n-head", "3"], "n_head=3 does not divide n_embd=32"),
    (["train", *TINY, "--checkpoint-every", "-1"], "--checkpoint-every -1 must be >= 0"),
    (["train", *TINY, "--checkpoint-every", "1"], "--checkpoint-every needs --checkpoint"),
    (["plan", "--gpus", "0"], "gpus=0 must be at least 1"),
    (["plan", "--mfu", "0"], "mfu=0.0 must be in (0, 1]"),
    (["plan", "--nodes", "0"], "nodes=0 must be at least 1"),
    (["plan", "--price", "-1"], "price=-1.0 must be >= 0"),
    (["plan", "--gpu", "tpu"], "gpu='tpu' is unknown"),
    (["speedrun", "--stages", "gpt2", "bogus", "--seconds", "1"], "--stages bogus: no such stage"),
    (["speedrun", "--seconds", "0"], "--seconds 0 must be > 0"),
    (["download", "--shards", "1", "--dir", "x"], "--shards 1: need 2"),
    (["bench", "--steps", "0"], "--steps=0 must be at least 1"),
])
def test_bad_values(capsys, args, expected):
    _, line = run(capsys, *args)
    assert expected in line


def test_outputs_are_checked_before_training(capsys, files, tmp_path):
    _, line = run(capsys, "train", *TINY, "--json", tmp_path)
    assert f"--json {tmp_path} is a folder" in line
    _, line = run(capsys, "train", *TINY, "--log", tmp_path / "missing" / "run.jsonl")
    assert "the folder" in line and "does not exist" in line
    _, line = run(capsys, "tokenizer", "--dir", files / "good", "--vocab", "300", "--out", tmp_path / "missing" / "t.json")
    assert "--out" in line and "does not exist" in line
    _, line = run(capsys, "train", *TINY, "--resume", tmp_path / "none.pt")
    assert "no checkpoint file there" in line


# ---- --debug, bugs, and the real process ---------------------------------------------------------


def test_debug_adds_the_traceback(capsys, files):
    for argv in (["--debug", "plan", "--gpus", "0"], ["plan", "--gpus", "0", "--debug"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("error: gpus=0")
    assert "--debug" in subprocess.run([sys.executable, "-m", "nanogpt_core", "--help"], capture_output=True,
                                       text=True).stdout


def test_a_bug_is_one_line_too_but_says_so(capsys, monkeypatch):
    import nanogpt_core.plan

    def broken(*args, **kwargs):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(nanogpt_core.plan, "make_plan", broken)
    assert main(["plan"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unexpected TypeError: unsupported operand" in err[0] and "--debug" in err[0]


def test_through_a_real_process():
    env = {**os.environ, "SPEEDRUN_SCALE": "bogus"}
    proc = subprocess.run([sys.executable, "-m", "nanogpt_core", "plan", "--gpus", "0"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: gpus=0 must be at least 1 (GPUs per node)", proc.stderr
    proc = subprocess.run([sys.executable, "-m", "nanogpt_core", "train", "--steps", "1"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: SPEEDRUN_SCALE='bogus'"), proc.stderr
