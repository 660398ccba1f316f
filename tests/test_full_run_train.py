"""Long-run robustness (NaN stop, JSONL log), the FineWeb data path, and the 2-process gloo run."""

import json
import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanogpt_core.data import TokenStreamLoader
from nanogpt_core.model import GPT
from nanogpt_core.train import train


class NanAfter(GPT):
    """A model whose loss turns NaN from the ``bad``-th forward pass on (a diverging run)."""

    bad = 5

    def forward(self, idx, targets=None, reduction="mean"):
        NanAfter.calls += 1
        out = super().forward(idx, targets, reduction)
        return out * float("nan") if self.training and NanAfter.calls >= NanAfter.bad else out


def test_nan_stops_the_run_and_names_the_last_good_checkpoint(small_data, tiny_cfg, tmp_path):
    NanAfter.calls = 0
    ckpt = tmp_path / "run.pt"
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 5.*Last good checkpoint: .*run\.pt \(step 4\)"):
        train(tiny_cfg.replace(steps=10), small_data, progress=False, checkpoint_path=ckpt, checkpoint_every=2,
              model_cls=NanAfter)
    assert torch.load(ckpt, weights_only=True)["step"] == 4  # the bad step wrote nothing
    NanAfter.calls = 0
    with pytest.raises(FloatingPointError, match="Last good checkpoint: none"):
        train(tiny_cfg.replace(steps=10), small_data, progress=False, model_cls=NanAfter)


def test_jsonl_log_has_one_line_per_step_and_eval(small_data, tiny_cfg, tmp_path):
    log = tmp_path / "run.jsonl"
    _, result = train(tiny_cfg.replace(steps=6, eval_every=3), small_data, progress=False, log_path=log)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert [r["loss"] for r in steps] == pytest.approx(result.losses)
    assert [r["step"] for r in evals] == [0, 3, 6] and evals[-1]["bpb"] == pytest.approx(result.final_val_bpb)


def test_ranks_together_see_the_single_process_batch(small_data):
    tokens = small_data.stream("train")
    single = TokenStreamLoader(tokens, 8, 16, seed=5)
    ranks = [TokenStreamLoader(tokens, 4, 16, seed=5, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        x, y = single.next_batch()
        parts = [loader.next_batch() for loader in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)


def test_trains_on_fineweb_shards_with_the_packing_loader(tmp_path):
    from nanogpt_core.config import stage_config
    from nanogpt_core.download import fineweb_data, train_tokenizer_on_shards
    from nanogpt_core.tokenizer import save_tokenizer

    words = "the of and to in a is that for it with as was on be by this are from".split()
    for i in range(3):
        texts = [" ".join(words[(i + j + k) % len(words)] for k in range(40 + j % 30)) for j in range(300)]
        pq.write_table(pa.table({"text": texts}), tmp_path / f"shard_{i:05d}.parquet")
    save_tokenizer(train_tokenizer_on_shards(tmp_path, vocab_size=300), tmp_path / "tok.json")
    data = fineweb_data(tmp_path, tmp_path / "tok.json")
    assert callable(data.train_docs) and sum(map(len, data.val_docs())) > 2000
    cfg = stage_config("packing", "toy", vocab_size=300, n_layer=1, n_embd=32, n_head=2, seq_len=32, batch_size=2,
                       steps=3, eval_tokens=256, compile=False, bf16=False, device="cpu")
    _, result = train(cfg, data, progress=False)
    assert result.steps == 3 and result.final_val_bpb > 0


def test_cli_data_needs_a_tokenizer(tmp_path):
    from nanogpt_core.__main__ import main

    assert main(["train", "--scale", "toy", "--data", str(tmp_path)]) == 2


TINY = ["--stage", "gpt2", "--scale", "toy", "--steps", "4", "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
        "--seq-len", "32", "--eval-tokens", "512", "--warmup-steps", "1", "--eval-every", "0", "--device", "cpu", "--quiet"]


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="torchrun not installed")
@pytest.mark.parametrize("stage", ["gpt2", "muon"])
def test_two_gloo_processes_match_one_process(tmp_path, stage):
    """2 ranks x 4 rows with averaged gradients == 1 process x 8 rows: the same losses. At the
    `muon` stage both halves of the optimizer sync themselves: Muon and sharded AdamW."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [*TINY, "--stage", stage, "--compile", "off", "--bf16", "off"]  # the last --stage wins
    single = subprocess.run([sys.executable, "-m", "nanogpt_core", "train", *args, "--batch-size", "8",
                             "--json", str(tmp_path / "one.json"), "--checkpoint", str(tmp_path / "one.pt")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    multi = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "nanogpt_core", "train", *args,
                            "--batch-size", "4", "--json", str(tmp_path / "two.json")],
                           capture_output=True, text=True, timeout=300, env=env)
    assert multi.returncode == 0, multi.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["world_size"] == 2 and one["world_size"] == 1 and two["tokens"] == one["tokens"]
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-4)
    # Validation as run 1's: each process evaluates its own share of the val documents and the nats
    # and bytes are summed, so the 2-process figure is the single model's on both shares together.
    from nanogpt_core.checkpoint import load_checkpoint
    from nanogpt_core.data import toy_data
    from nanogpt_core.evaluate import checkpoint_model, evaluate, val_batches

    data, ckpt = toy_data(), load_checkpoint(tmp_path / "one.pt")
    model = checkpoint_model(ckpt, tmp_path / "one.pt", data, "cpu", "the toy tokenizer")
    both = [b for r in (0, 1) for b in val_batches(data, 4, 32, 512, rank=r, world_size=2)]
    assert two["final_val_bpb"] == pytest.approx(evaluate(model, both, data.token_bytes)["bpb"], abs=1e-4)


def test_cli_evaluate_and_sample_a_checkpoint(tmp_path):
    ckpt = tmp_path / "c.pt"
    base = [sys.executable, "-m", "nanogpt_core"]
    proc = subprocess.run([*base, "train", *TINY, "--batch-size", "4", "--steps", "2", "--checkpoint", str(ckpt)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ev = subprocess.run([*base, "evaluate", "--checkpoint", str(ckpt), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0 and "step 2: val loss" in ev.stdout and "bits per byte" in ev.stdout, ev.stderr[-2000:]
    from test_core_metric import TASKS, write_bundle

    bundle = write_bundle(tmp_path / "core", TASKS)
    core = subprocess.run([*base, "evaluate", "--checkpoint", str(ckpt), "--device", "cpu", "--core", str(bundle),
                           "--core-max-per-task", "3"], capture_output=True, text=True, timeout=300)
    assert core.returncode == 0, core.stderr[-2000:]
    assert all(f"  {label} " in core.stdout for label in TASKS) and "(3 items)" in core.stdout
    assert "CORE " in core.stdout.splitlines()[-1]
    sm = subprocess.run([*base, "sample", "--checkpoint", str(ckpt), "--prompt", "ROMEO", "--tokens", "5", "--device", "cpu"],
                        capture_output=True, text=True, timeout=300)
    assert sm.returncode == 0 and sm.stdout.startswith("ROMEO"), sm.stderr[-2000:]


def _resume_worker(rank, world_size, phase, folder):
    """One process of a 2-process `packing` run: the whole run, its first half, or the resumed rest."""
    import torch

    from nanogpt_core.config import stage_config
    from nanogpt_core.data import toy_data

    torch.set_num_threads(1)
    cfg = stage_config("packing", "toy", n_layer=1, n_embd=32, n_head=2, seq_len=32, batch_size=2, steps=6,
                       warmup_steps=1, eval_every=0, eval_tokens=512, compile=False, bf16=False, device="cpu")
    ckpt = os.path.join(folder, "run.pt")
    kwargs = {"whole": {}, "first": dict(checkpoint_path=ckpt, stop_after=3), "rest": dict(resume_from=ckpt)}[phase]
    _, result = train(cfg, toy_data(), progress=False, **kwargs)
    if rank == 0:
        with open(os.path.join(folder, f"{phase}.json"), "w") as f:
            json.dump({"losses": result.losses, "bpb": result.final_val_bpb}, f)


@pytest.mark.timeout(300)
def test_two_process_run_resumes_with_each_process_state(tmp_path):
    """Each process keeps its own optimizer shard and loader position in PATH.rankR: a 2-process
    `packing` run stopped at step 3 and resumed gives the losses of the uninterrupted run."""
    from spawn import run_on_two_processes

    for phase in ("whole", "first", "rest"):
        run_on_two_processes(_resume_worker, phase, str(tmp_path))
    whole, rest = (json.loads((tmp_path / f"{p}.json").read_text()) for p in ("whole", "rest"))
    assert (tmp_path / "run.pt.rank0").exists() and (tmp_path / "run.pt.rank1").exists()
    assert rest["losses"] == pytest.approx(whole["losses"], abs=1e-5) and len(rest["losses"]) == 6
    assert rest["bpb"] == pytest.approx(whole["bpb"], abs=1e-5)
    with pytest.raises(ValueError, match="written by 2 process"):
        from nanogpt_core.checkpoint import load_run_state

        load_run_state(tmp_path / "run.pt", rank=0, world_size=1)


def _longer_run_worker(rank, world_size, phase, folder):
    """One process of a 2-process `muon` run that starts its own process group (as under torchrun):
    6 steps stopped after 3, then resumed as a 12-step run with allow_longer_run; or 12 steps whole."""
    import torch
    import torch.distributed as dist

    from nanogpt_core.config import stage_config
    from nanogpt_core.data import toy_data

    torch.set_num_threads(1)
    cfg = stage_config("muon", "toy", n_layer=1, n_embd=32, n_head=2, seq_len=32, batch_size=2, steps=6,
                       eval_every=0, eval_tokens=512, compile=False, bf16=False, device="cpu")
    ckpt, log = os.path.join(folder, "run.pt"), os.path.join(folder, f"{phase}.jsonl")
    if phase == "whole":
        train(cfg.replace(steps=12), toy_data(), progress=False, log_path=log)
    elif phase == "first":
        train(cfg, toy_data(), progress=False, checkpoint_path=ckpt, stop_after=3)
    else:
        train(cfg.replace(steps=12), toy_data(), progress=False, resume_from=ckpt, allow_longer_run=True, log_path=log)
    assert not dist.is_initialized(), "train() started the process group, so it must destroy it at the end"


@pytest.mark.timeout(300)
def test_a_longer_run_reschedules_muons_weight_decay_and_momentum_on_two_processes(tmp_path):
    """--allow-longer-run: the loop sets the learning rate, Muon's momentum and its weight decay from
    the new step count, so the resumed steps run at exactly the schedule of a 12-step run (Muon's
    weight decay at step 4 is 3/4 of its peak, not the 1/2 of the 6-step run it came from)."""
    from spawn import run_on_two_processes

    for phase in ("whole", "first", "rest"):
        run_on_two_processes(_longer_run_worker, phase, str(tmp_path), start_group=False)
    whole, rest = ([json.loads(line) for line in (tmp_path / f"{p}.jsonl").read_text().splitlines()
                    if '"step"' in line and json.loads(line)["kind"] == "step"] for p in ("whole", "rest"))
    keys = ("lr_multiplier", "muon_momentum", "muon_weight_decay_multiplier")
    assert [r["step"] for r in rest] == list(range(4, 13))
    assert [[r[k] for k in keys] for r in rest] == [[r[k] for k in keys] for r in whole[3:]]
    assert rest[0]["muon_weight_decay_multiplier"] == pytest.approx(0.75)


def test_process_group_binds_the_gpu_before_starting_and_destroys_the_group(monkeypatch):
    """Under torchrun on a CUDA machine: set_device(cuda:LOCAL_RANK) before init_process_group(nccl,
    device_id=...), and destroy_process_group when the run ends (recorded with stand-ins here)."""
    import torch
    import torch.distributed as dist

    from nanogpt_core.train import process_group

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", str(device))))
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.append(("init", kw["backend"], str(kw["device_id"]))))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append(("destroy",)))
    with process_group(torch.device("cuda:1")) as (rank, world_size):
        assert (rank, world_size) == (1, 2)
        assert calls == [("set_device", "cuda:1"), ("init", "nccl", "cuda:1")]
    assert calls[-1] == ("destroy",)
    calls.clear()
    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # a group the caller started: used, left running
    with process_group(torch.device("cuda:1")):
        pass
    assert calls == []


def test_a_speedrun_scale_run_refuses_sdpa_unless_told(capsys, monkeypatch):
    """Without FlashAttention-3 (no Hopper GPU here) a speedrun-scale run does not start, and says why."""
    import nanogpt_core.attention as attention
    import nanogpt_core.hardware as hardware
    from nanogpt_core.__main__ import main

    monkeypatch.setattr(attention, "_fa3", (None, "no CUDA GPU is visible"))
    monkeypatch.setattr(hardware, "_printed", set())
    assert main(["train", "--scale", "speedrun", "--stage", "packing", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "FlashAttention-3 cannot run here (no CUDA GPU is visible)" in err and "--allow-sdpa" in err
    assert "pip install -e '.[gpu]'" in err
    assert attention.require_fa3("auto", "speedrun", allow_sdpa=True) == "sdpa"  # told: it runs on SDPA
    assert attention.require_fa3("auto", "toy") == "sdpa"  # smaller scales fall back without asking
    assert attention.require_fa3("naive", "speedrun") == "naive"  # the gpt2 stage's 2019 attention, on purpose
    monkeypatch.setattr(attention, "_fa3", (object(), ""))  # a machine where FA3 loads
    assert attention.require_fa3("auto", "speedrun") == "fa3"
    assert "attention backend: fa3" in capsys.readouterr().out  # the run says which kernel it uses
