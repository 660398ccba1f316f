"""Every stage of the ladder trains on FineWeb-edu parquet shards (files the test writes), and
the shards' documents reach the loaders whole, in order, each rank its own."""

import math

import pytest
import torch

from fineweb_files import fineweb_folder, tiny
from nanogpt_core.config import STAGES
from nanogpt_core.data import ParquetDocuments, fineweb_shards
from nanogpt_core.download import fineweb_data
from nanogpt_core.loaders import ConsecutiveLoader, DocumentLoader
from nanogpt_core.train import build_loader, train


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return fineweb_folder(tmp_path_factory.mktemp("fineweb"))


@pytest.fixture
def data(shards):
    return fineweb_data(shards, shards / "tok.json")


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_trains_on_parquet_shards(stage, data):
    cfg = tiny(stage, data.enc.n_vocab)
    loader = build_loader(cfg, data)
    assert isinstance(loader, ConsecutiveLoader if cfg.train.loader == "stream" else DocumentLoader)
    _, result = train(cfg, data, progress=False)
    assert result.steps == 3 and all(math.isfinite(x) for x in result.losses)
    assert result.final_val_bpb is not None and 0 < result.final_val_bpb < 20


def test_the_corpus_is_streamed_not_held(data):
    assert isinstance(data.train_docs, ParquetDocuments) and not data.in_memory
    assert data.train_docs.paths == fineweb_shards(data.train_docs.paths[0].parent, "train")  # the last shard is val
    with pytest.raises(ValueError, match="stream"):
        data.stream("train")
    assert isinstance(data.val_docs, ParquetDocuments)  # the val shard, read by row group as run 1 reads it
    assert data.val_docs.paths == fineweb_shards(data.train_docs.paths[0].parent, "val")
    assert sum(len(doc) for doc in data.val_docs()) > 1000


def test_the_stream_loader_cuts_consecutive_rows_from_the_documents_in_order(data):
    one_pass = [t for doc in data.train_docs() for t in doc]  # every train document, in shard order
    loader = ConsecutiveLoader(data.train_docs, batch_size=3, seq_len=16)
    B, T = 3, 16
    for step in range(4):
        x, y = loader.next_batch()
        window = torch.tensor(one_pass[step * B * T : step * B * T + B * T + 1])
        assert torch.equal(x.flatten(), window[:-1]) and torch.equal(y.flatten(), window[1:])


def test_ranks_read_disjoint_row_groups_that_cover_the_shards(data):
    docs = data.train_docs
    n_groups = len(docs.groups())
    assert n_groups > 4  # several row groups per shard
    seen = []
    for rank in range(3):
        it = docs.documents(rank, 3)
        positions = []
        for where, tokens in it:
            if where[0] > 0:  # one epoch
                break
            positions.append(where)
        groups = {(s, g) for _, s, g, _ in positions}
        assert groups == set(docs.groups()[rank::3])
        seen += positions
    assert len(seen) == len(set(seen)) == sum(1 for _ in docs())  # every document once, by exactly one rank


def test_every_document_starts_with_bos_and_decodes_to_its_text(data, shards):
    import pyarrow.parquet as pq

    from nanogpt_core.tokenizer import bos_id

    texts = pq.read_table(shards / "shard_00001.parquet").column("text").to_pylist()
    docs = data.train_docs.read([(0, 1, g, r) for g in (0, 2) for r in (0, 5)])
    bos = bos_id(data.enc)
    for (_, shard, group, row), tokens in docs.items():
        assert tokens[0] == bos and data.enc.decode(tokens[1:]) == texts[group * 20 + row]
