"""A resumed run is the run it continues, or it does not start: the checkpoint records its format,
config and data identity, and ``train(resume_from=...)`` compares them with the run's."""

import dataclasses

import pytest
import torch

from nanogpt_core.data import TokenizedCorpus
from nanogpt_core.checkpoint import CHECKPOINT_FORMAT, CheckpointError, data_identity, load_checkpoint
from nanogpt_core.train import train


@pytest.fixture
def half_run(small_data, tiny_cfg, tmp_path):
    """A 6-step run stopped after 3 steps: (its config, its checkpoint)."""
    cfg = tiny_cfg.replace(steps=6)
    ckpt = tmp_path / "run.pt"
    train(cfg, small_data, progress=False, checkpoint_path=ckpt, stop_after=3)
    return cfg, ckpt


def test_checkpoint_records_its_format_and_data(half_run, small_data):
    _, ckpt = half_run
    saved = load_checkpoint(ckpt)
    assert saved["format"]["version"] == CHECKPOINT_FORMAT == 3
    assert saved["format"]["data"] == data_identity(small_data)
    assert saved["format"]["data"]["vocab_size"] == 512 and len(saved["format"]["data"]["tokenizer"]) == 16


@pytest.mark.parametrize("change, named", [
    (dict(stage="flash-attention"), "stage 'gpt2' -> 'flash-attention'"),
    (dict(n_embd=64), "n_embd 32 -> 64"),
    (dict(n_layer=2), "n_layer 1 -> 2"),
    (dict(optimizer="muon"), "optimizer 'adamw' -> 'muon'"),
    (dict(batch_size=4), "batch_size 8 -> 4"),
    (dict(lr=1e-3), "lr 0.003 -> 0.001"),
    (dict(seed=7), "seed 1337 -> 7"),
    (dict(loader="bos"), "loader 'stream' -> 'bos'"),
    (dict(eval_tokens=2048), "eval_tokens 1024 -> 2048"),
])
def test_a_different_config_is_refused_with_the_fields_named(half_run, small_data, change, named):
    cfg, ckpt = half_run
    stage = change.pop("stage", None)
    other = cfg.replace(**change)
    if stage:
        other = dataclasses.replace(other, stage=stage)
    with pytest.raises(CheckpointError, match="is a different run") as err:
        train(other, small_data, progress=False, resume_from=ckpt)
    assert named in str(err.value)


def test_other_data_is_refused(half_run, small_data):
    cfg, ckpt = half_run
    other_val = TokenizedCorpus(small_data.enc, small_data.train_docs, small_data.train_docs[:40],
                                small_data.token_bytes, "the same tokenizer, another val split")
    with pytest.raises(CheckpointError, match=r"data val '.*data val_docs ") as err:
        train(cfg, other_val, progress=False, resume_from=ckpt)
    assert "tokenizer" not in str(err.value)  # the same tokenizer: only what differs is named
    from nanogpt_core.data import toy_data

    retokenized = toy_data(vocab_size=512, max_chars=700)  # another tokenizer of the same size
    with pytest.raises(CheckpointError, match="data tokenizer"):
        train(cfg, retokenized, progress=False, resume_from=ckpt)


def test_how_it_runs_may_change(half_run, small_data):
    cfg, ckpt = half_run
    _, result = train(cfg.replace(device="cpu", eval_every=2, bf16="off"), small_data, progress=False, resume_from=ckpt)
    assert result.steps == 6 and result.final_val_bpb is not None


def test_more_steps_need_the_flag_and_then_extend_the_run(half_run, small_data):
    cfg, ckpt = half_run
    with pytest.raises(CheckpointError, match=r"run of 6 steps \(now at step 3\).*--allow-longer-run"):
        train(cfg.replace(steps=8), small_data, progress=False, resume_from=ckpt)
    _, result = train(cfg.replace(steps=8), small_data, progress=False, resume_from=ckpt, allow_longer_run=True)
    assert result.steps == 8 and len(result.losses) == 8 and result.config["train"]["steps"] == 8


def test_fewer_steps_are_refused(half_run, small_data):
    cfg, ckpt = half_run
    with pytest.raises(CheckpointError, match=r"run of 6 steps \(now at step 3\).*Resume with --steps 6$"):
        train(cfg.replace(steps=5), small_data, progress=False, resume_from=ckpt, allow_longer_run=True)
    with pytest.raises(CheckpointError, match=r"holds a run at step 3 of 6: with --steps 2 there is nothing left"):
        train(cfg.replace(steps=2), small_data, progress=False, resume_from=ckpt)


def test_a_finished_run_says_so(small_data, tiny_cfg, tmp_path):
    cfg, ckpt = tiny_cfg.replace(steps=3), tmp_path / "done.pt"
    train(cfg, small_data, progress=False, checkpoint_path=ckpt)
    for steps in (3, 2):
        with pytest.raises(CheckpointError, match=rf"holds a finished run at step 3 of 3: with --steps {steps} "
                                                  "there is nothing left to train"):
            train(cfg.replace(steps=steps), small_data, progress=False, resume_from=ckpt)
    _, result = train(cfg.replace(steps=5), small_data, progress=False, resume_from=ckpt, allow_longer_run=True)
    assert result.steps == 5 and result.val[-1]["step"] == 5


def test_older_formats_are_not_resumed_and_newer_ones_not_read(half_run, small_data, tmp_path):
    """Formats 1 and 2 were written before Muon updated q, k and v apart and validation became
    run 1's: resuming one would mix two optimizers and two metrics in one run, so it is refused
    (evaluate and sample still read it)."""
    cfg, ckpt = half_run
    saved = torch.load(ckpt, weights_only=True)
    for version, fmt in ((1, None), (2, {"version": 2, "data": saved["format"]["data"]})):
        if fmt is None:
            del saved["format"]  # as written before the format version existed
        else:
            saved["format"] = fmt
        torch.save(saved, tmp_path / f"v{version}.pt")
        assert load_checkpoint(tmp_path / f"v{version}.pt")["step"] == 3
        with pytest.raises(CheckpointError, match=f"format {version}, written before Muon .* not resumed"):
            train(cfg, small_data, progress=False, resume_from=tmp_path / f"v{version}.pt")
    saved["format"] = {"version": CHECKPOINT_FORMAT + 1}
    torch.save(saved, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=f"format {CHECKPOINT_FORMAT + 1}, newer than"):
        load_checkpoint(tmp_path / "future.pt")


def test_a_damaged_state_is_a_checkpoint_error(half_run, small_data, tmp_path):
    cfg, ckpt = half_run
    saved = torch.load(ckpt, weights_only=True)
    saved["model"]["wte.weight"] = saved["model"]["wte.weight"][:, :16]
    torch.save(saved, tmp_path / "bad_weights.pt")
    with pytest.raises(CheckpointError, match="saved weights do not fit this model.*wte.weight"):
        train(cfg, small_data, progress=False, resume_from=tmp_path / "bad_weights.pt")
    saved = torch.load(ckpt, weights_only=True)
    del saved["optimizer"]
    torch.save(saved, tmp_path / "no_optimizer.pt")
    with pytest.raises(CheckpointError, match="no 'optimizer' entry"):
        train(cfg, small_data, progress=False, resume_from=tmp_path / "no_optimizer.pt")
