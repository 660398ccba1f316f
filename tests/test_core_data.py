import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanogpt_core.data import (TokenStreamLoader, fineweb_shards, iter_parquet_texts, load_fineweb,
                               load_toy_corpus, split_documents)


def write_shards(folder, n_shards=3, rows=5):
    for s in range(n_shards):
        texts = [f"shard {s} document {r}: " + "word " * (r + 1) for r in range(rows)]
        pq.write_table(pa.table({"text": texts, "id": list(range(rows))}), folder / f"shard_{s:05d}.parquet", row_group_size=2)


def test_toy_corpus_holds_out_whole_plays():
    corpus = load_toy_corpus()
    assert len(corpus.train) > 1000 and len(corpus.val) > 50
    assert not set(corpus.train) & set(corpus.val)
    assert any("Caesar" in d or "CAESAR" in d for d in corpus.val)


def test_split_documents_keeps_speeches_whole():
    text = "ACT I.\n\nScene I. A room.\n\nA.\nHello there.\n\nB.\nGood day.\n\nScene II. Another.\n\nC.\n" + "x" * 50
    docs = split_documents(text, max_chars=20)
    assert all(not d.startswith("Scene") for d in docs)
    assert "A.\nHello there." in docs and "B.\nGood day." in docs
    assert any(d.startswith("C.") for d in docs)


def test_parquet_streaming_and_split(tmp_path):
    write_shards(tmp_path)
    train_files, val_files = fineweb_shards(tmp_path, "train"), fineweb_shards(tmp_path, "val")
    assert [f.name for f in val_files] == ["shard_00002.parquet"] and len(train_files) == 2
    texts = list(iter_parquet_texts(train_files, batch_rows=2))
    assert len(texts) == 10 and texts[0].startswith("shard 0 document 0")


def test_load_fineweb_with_datasets(tmp_path):
    write_shards(tmp_path)
    ds = load_fineweb(tmp_path, "val")
    assert [row["text"] for row in ds][-1].startswith("shard 2 document 4")


def test_parquet_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="need at least 2"):
        fineweb_shards(tmp_path, "train")
    bad = tmp_path / "shard_00000.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ValueError, match="not a readable parquet file.*download it again"):
        list(iter_parquet_texts([bad]))
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "nocol.parquet")
    with pytest.raises(ValueError, match="no `text` column"):
        list(iter_parquet_texts([tmp_path / "nocol.parquet"]))


def test_stream_loader_is_deterministic_resumable_and_rank_dependent():
    tokens = torch.arange(1000)
    a = TokenStreamLoader(tokens, 4, 16, seed=3)
    batches = [a.next_batch() for _ in range(3)]
    x, y = batches[0]
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    b = TokenStreamLoader(tokens, 4, 16, seed=3)
    b.load_state_dict({"step": 2})
    assert torch.equal(b.next_batch()[0], batches[2][0])
    other_rank = TokenStreamLoader(tokens, 4, 16, seed=3, rank=1, world_size=2)
    assert not torch.equal(other_rank.next_batch()[0], x)
