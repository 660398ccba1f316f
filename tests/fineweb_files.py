"""FineWeb-like parquet shards and a tokenizer trained on them, written by the tests (no network)."""

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WORDS = ("the of and to in a is that for it with as was on be by this are from at or an which one "
         "have not but had his they you were her all she there would their we him been has when who").split()


def write_fineweb_like(folder, shards=4, docs_per_shard=120, rows_per_group=20, seed=0):
    """``shards`` parquet files of documents with a web-like spread of lengths (a few words to a
    few hundred), one `text` column, ``rows_per_group`` rows per row group; the last is the val shard."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for s in range(shards):
        texts = [" ".join(rng.choice(WORDS) for _ in range(int(rng.lognormvariate(3.2, 0.9)) + 2))
                 for _ in range(docs_per_shard)]
        pq.write_table(pa.table({"text": texts}), folder / f"shard_{s:05d}.parquet", row_group_size=rows_per_group)
    return folder


def fineweb_folder(folder, vocab_size=300, **kwargs):
    """Shards plus ``tok.json`` (a BPE tokenizer trained on the train shards): what `train --data` reads."""
    from nanogpt_core.download import train_tokenizer_on_shards
    from nanogpt_core.tokenizer import save_tokenizer

    folder = write_fineweb_like(folder, **kwargs)
    save_tokenizer(train_tokenizer_on_shards(folder, vocab_size=vocab_size), folder / "tok.json")
    return folder


def tiny(stage, vocab_size, **overrides):
    """A one-layer model at ``stage`` that trains a step in milliseconds on a CPU. Compilation is off
    (the data path does not depend on it, and compiling every stage would take minutes)."""
    from nanogpt_core.config import stage_config

    return stage_config(stage, "toy", **{
        "vocab_size": vocab_size, "n_layer": 1, "n_embd": 32, "n_head": 2, "seq_len": 32, "batch_size": 2,
        "steps": 3, "warmup_steps": 1, "eval_every": 0, "eval_tokens": 256, "compile": False, "bf16": "off",
        "device": "cpu", **overrides})
