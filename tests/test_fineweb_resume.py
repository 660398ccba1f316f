"""Resuming a FineWeb run continues from a position in the shards (shard, row group, row), reads
back only the row groups that hold the documents the loader kept, and gives exactly the batches
and losses of the uninterrupted run: in one process and in two gloo processes."""

import json
import os

import pytest
import torch

from fineweb_files import fineweb_folder, tiny
from nanogpt_core.download import fineweb_data
from nanogpt_core.loaders import ConsecutiveLoader, DocumentLoader
from nanogpt_core.train import train


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return fineweb_folder(tmp_path_factory.mktemp("fineweb"), docs_per_shard=60)


def fresh(shards):
    """The shards as a new process would open them (nothing read yet)."""
    return fineweb_data(shards, shards / "tok.json")


def make_loader(kind, docs, rank=0, world_size=1):
    if kind == "stream":
        return ConsecutiveLoader(docs, batch_size=4, seq_len=32, rank=rank, world_size=world_size)
    return DocumentLoader(docs, batch_size=4, seq_len=32, policy=kind, buffer_size=8, rank=rank, world_size=world_size)


@pytest.mark.parametrize("kind", ["stream", "greedy_crop", "bestfit"])
@pytest.mark.parametrize("world_size", [1, 2])
def test_loader_resumes_from_a_position_without_replaying(shards, tmp_path, kind, world_size):
    for rank in range(world_size):
        whole = make_loader(kind, fresh(shards).train_docs, rank, world_size)
        batches = [whole.next_batch()]
        while whole.source.position[0] < 1 or len(batches) < 40:  # into the second epoch
            batches.append(whole.next_batch())
        batches += [whole.next_batch() for _ in range(5)]
        for stop in (7, len(batches) - 8):  # within the first epoch, and across the epoch boundary
            run = make_loader(kind, fresh(shards).train_docs, rank, world_size)
            for _ in range(stop):
                run.next_batch()
            torch.save(run.state_dict(), tmp_path / "state.pt")
            state = torch.load(tmp_path / "state.pt", weights_only=True)  # what a checkpoint keeps: plain ints and lists
            docs = fresh(shards).train_docs
            resumed = make_loader(kind, docs, rank, world_size)
            resumed.load_state_dict(state)
            held_groups = {(w[1], w[2]) for w in state["buffer_at"]}
            assert docs.groups_read == len(held_groups)  # only the row groups of the held documents, nothing replayed
            if stop > 7:  # the run read every row group of an epoch and more; the resume, a few
                assert docs.groups_read < run.source.positioned.groups_read
            for x, y in batches[stop:]:
                rx, ry = resumed.next_batch()
                assert torch.equal(rx, x) and torch.equal(ry, y)


def test_the_position_names_shard_row_group_and_row(shards):
    loader = make_loader("bestfit", fresh(shards).train_docs)
    loader.next_batch()
    state = loader.state_dict()
    n = state["consumed"]  # documents read so far: the next one sits at row n of shard 0 (20 rows per group)
    # the buffer is topped up a whole read at a time (a row group here, as run 1's loader does), so
    # the position is the end of the group read last: row 20 of group n // 20 - 1
    assert n < 60 and n % 20 == 0 and state["position"] == [0, 0, n // 20 - 1, 20]
    assert 0 < len(state["buffer_at"]) == len(state["buffer"]) < 8 + 20  # the documents waiting in the buffer
    assert all(w[:2] == [0, 0] and w[2] * 20 + w[3] < n for w in state["buffer_at"])


def test_a_position_from_another_layout_is_refused(shards):
    run = make_loader("stream", fresh(shards).train_docs, rank=0, world_size=2)
    for _ in range(3):
        run.next_batch()
    other = make_loader("stream", fresh(shards).train_docs, rank=1, world_size=2)
    with pytest.raises(ValueError, match="same number of processes"):
        other.load_state_dict(run.state_dict())


@pytest.mark.parametrize("stage", ["gpt2", "packing"])
def test_stopped_and_resumed_run_equals_the_uninterrupted_one(shards, tmp_path, stage):
    cfg = tiny(stage, fresh(shards).enc.n_vocab, steps=6)
    _, whole = train(cfg, fresh(shards), progress=False)
    ckpt = tmp_path / "run.pt"
    train(cfg, fresh(shards), progress=False, checkpoint_path=ckpt, stop_after=3)
    _, rest = train(cfg, fresh(shards), progress=False, resume_from=ckpt)
    assert rest.losses == pytest.approx(whole.losses, abs=1e-6) and len(rest.losses) == 6
    assert rest.final_val_bpb == pytest.approx(whole.final_val_bpb, abs=1e-6)


def _worker(rank, world_size, phase, folder):
    """One of two processes: the whole run, its first half (checkpointed), or the resumed rest."""
    from pathlib import Path

    torch.set_num_threads(1)
    folder = Path(folder)
    for stage in ("gpt2", "packing"):
        data = fineweb_data(folder, folder / "tok.json")
        cfg = tiny(stage, data.enc.n_vocab, steps=6)
        ckpt = folder / f"{stage}.pt"
        kwargs = {"whole": {}, "first": dict(checkpoint_path=ckpt, stop_after=3), "rest": dict(resume_from=ckpt)}[phase]
        _, result = train(cfg, data, progress=False, **kwargs)
        if rank == 0:
            (folder / f"{stage}-{phase}.json").write_text(json.dumps({"losses": result.losses, "bpb": result.final_val_bpb}))


@pytest.mark.timeout(300)
def test_two_gloo_processes_resume_from_their_positions(tmp_path):
    from spawn import run_on_two_processes

    folder = fineweb_folder(tmp_path / "fineweb")
    for phase in ("whole", "first", "rest"):
        run_on_two_processes(_worker, phase, str(folder))
    for stage in ("gpt2", "packing"):
        whole, rest = (json.loads((folder / f"{stage}-{p}.json").read_text()) for p in ("whole", "rest"))
        assert os.path.exists(folder / f"{stage}.pt.rank1")
        own = torch.load(folder / f"{stage}.pt.rank1", weights_only=True)["loader"]
        assert own["position"] is not None and len(own["position"]) == 4  # rank 1's place in the shards
        assert rest["losses"] == pytest.approx(whole["losses"], abs=1e-6) and len(rest["losses"]) == 6
        assert rest["bpb"] == pytest.approx(whole["bpb"], abs=1e-6)
