"""Document-aware loaders: BOS-aligned rows, and packing documents into rows (bin packing).

The 2019 loader (``data.TokenStreamLoader``) cuts rows out of one long token stream, so a row
usually starts mid-document and its first tokens are predicted with no context. The loaders
here build every row of ``T + 1`` tokens (T inputs, shifted by one for the targets) out of
whole documents, each starting with its BOS token, so position 0 of every row is a BOS.

Filling rows of capacity ``C = T + 1`` with documents of lengths ``l_i`` is bin packing. Three
policies, as measured in nanochat's log (2026-01-13, FineWeb-edu, T = 2048):

- ``greedy_crop``: documents in stream order; the one that does not fit is cropped to fill the
  row and its tail is discarded. Rows 100% full; 39.4% of document tokens cropped.
- ``greedy_pad``: documents in stream order; the one that does not fit waits for the next row
  and the rest of this row is padding (targets -1, ignored by the loss). Only documents longer
  than C are cropped (23%), but 22% of the row positions are padding.
- ``bestfit`` (BestFit-Crop): keep a buffer of documents; put the *largest* one that fits the
  space left; when none fits, crop the *shortest* to fill the row exactly. Rows 100% full;
  34.6% cropped.

With ``used`` the documents taken out of the buffer, ``placed`` their tokens that went into rows
and ``slots = rows * C``:

    utilization = placed / slots,   cropped fraction = (sum_used l_i - placed) / sum_used l_i

The floor on cropping is the tokens beyond C in documents longer than C (22.9% at T = 2048).

Every loader streams documents (constant memory besides the buffer), is deterministic for a
seed, gives each rank of a distributed run a disjoint share of the documents, and resumes
exactly from ``state_dict()``. On a finite list of documents it runs epochs: each epoch is a
fresh permutation (seeded), so no document is used twice within an epoch. On parquet shards
(``data.ParquetDocuments``) the state is a position in the shards (shard, row group, row),
so a resume reads only what it needs. ``ConsecutiveLoader`` at the end is the 2019 token
stream for documents streamed from disk.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

POLICIES = ("greedy_crop", "greedy_pad", "bestfit")
# Run 1's loader tokenizes a row group in batches of 128 documents and tops its buffer up one such
# batch at a time (nanochat 348fbb3, dataloader.py: tokenizer_batch_size=128): a read ends after
# 128 documents or at the end of a row group. The loaders here refill the same way, so that their
# buffer, and so their rows, are run 1's.
READ_DOCS = 128


# ---- the packing policies, on documents of any kind (only their length matters) -------------


@dataclass
class Doc:
    """A document in the buffer: its position in this rank's stream, length and tokens."""

    ordinal: int  # the n-th document this rank took from its stream (0, 1, 2, ...)
    length: int
    tokens: Sequence[int] | None = None  # None in length-only simulations
    index: int = -1  # where it sits in the corpus (list sources) or in one pass of the stream
    epoch: int = 0
    where: tuple | None = None  # (epoch, shard, row group, row) for documents of parquet shards


class DocBuffer:
    """Documents kept sorted by (length, arrival), so best-fit lookups are a binary search."""

    def __init__(self):
        self.keys: list[tuple[int, int]] = []  # (length, ordinal), ascending
        self.docs: list[Doc] = []

    def __len__(self) -> int:
        return len(self.docs)

    def push(self, doc: Doc) -> None:
        i = bisect.bisect(self.keys, (doc.length, doc.ordinal))
        self.keys.insert(i, (doc.length, doc.ordinal))
        self.docs.insert(i, doc)

    def pop_at(self, i: int) -> Doc:
        del self.keys[i]
        return self.docs.pop(i)

    def oldest(self) -> int:
        """Index of the document that arrived first (stream order)."""
        return min(range(len(self.keys)), key=lambda i: self.keys[i][1])

    def largest_fitting(self, space: int) -> int | None:
        """Index of the longest document of length <= space (the earliest among equals), or None."""
        j = bisect.bisect(self.keys, (space, math.inf))  # first key with length > space
        if j == 0:
            return None
        return bisect.bisect_left(self.keys, (self.keys[j - 1][0], -1))

    def shortest(self) -> int:
        return 0


def fill_row(buffer: DocBuffer, capacity: int, policy: str, refill: Callable[[], None]) -> tuple[list[tuple[Doc, int]], int]:
    """Fill one row of ``capacity`` tokens from ``buffer``: the pieces (doc, tokens taken) and the padding.

    ``refill()`` tops the buffer up before every choice. A piece takes a document's first
    tokens (``taken < doc.length`` means the document was cropped and its tail discarded).
    If the buffer runs dry (a finite stream at its end), the rest of the row is padding.
    """
    pieces: list[tuple[Doc, int]] = []
    pos = 0
    while pos < capacity:
        refill()
        space = capacity - pos
        if not buffer:
            return pieces, space
        if policy == "bestfit":
            i = buffer.largest_fitting(space)
            doc = buffer.pop_at(buffer.shortest() if i is None else i)
        else:  # greedy: stream order
            i = buffer.oldest()
            if policy == "greedy_pad" and buffer.docs[i].length > space and pos > 0:
                return pieces, space  # it waits for the next row; pad the rest of this one
            doc = buffer.pop_at(i)
        take = min(doc.length, space)
        pieces.append((doc, take))
        pos += take
    return pieces, 0


@dataclass
class PackingStats:
    """What a loader did, summed over the rows it emitted (per rank)."""

    rows: int = 0
    slots: int = 0  # rows * (T + 1) token positions
    placed: int = 0  # document tokens put into rows
    cropped: int = 0  # document tokens discarded by cropping
    padding: int = 0  # positions filled with padding (targets -1)
    docs_used: int = 0  # documents taken out of the buffer (whole + cropped)
    docs_cropped: int = 0

    def add_row(self, pieces: list[tuple[Doc, int]], padding: int, capacity: int) -> None:
        self.rows += 1
        self.slots += capacity
        self.padding += padding
        for doc, take in pieces:
            self.placed += take
            self.cropped += doc.length - take
            self.docs_used += 1
            self.docs_cropped += take < doc.length

    @property
    def utilization(self) -> float:
        """Fraction of row positions holding document tokens (1 - padding fraction)."""
        return self.placed / self.slots if self.slots else 0.0

    @property
    def crop_fraction(self) -> float:
        """Fraction of the used documents' tokens that were discarded."""
        total = self.placed + self.cropped
        return self.cropped / total if total else 0.0

    @property
    def pad_fraction(self) -> float:
        return self.padding / self.slots if self.slots else 0.0

    def summary(self) -> dict:
        return {**asdict(self), "utilization": self.utilization, "crop_fraction": self.crop_fraction,
                "pad_fraction": self.pad_fraction}


def check_args(batch_size: int, seq_len: int, policy: str, buffer_size: int) -> None:
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r} is not known; choose one of {', '.join(map(repr, POLICIES))}")
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len} is too short: a row needs at least 2 inputs (T >= 2)")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if buffer_size < 1:
        raise ValueError(f"buffer_size={buffer_size} must be >= 1")


# ---- where documents come from: a list (epochs, reshuffled) or a stream -----------------------


class DocumentSource:
    """This rank's documents, in order, as (ordinal, tokens); ordinal n is the n-th document.

    ``docs`` is one of:

    - a sequence of token lists (random access): each epoch is a seeded permutation, rank r of
      w takes every w-th document of it, and an epoch ends after len(docs) // w documents, so
      all ranks stay in step;
    - a positioned stream such as ``data.ParquetDocuments`` (it has ``documents(rank,
      world_size, start)``, ``after(position)`` and ``read(positions)``): it deals its row
      groups to the ranks, and a resume starts at a saved position and reads back only the
      documents a loader held, nothing before them;
    - a zero-argument callable returning a fresh iterable of token lists (any stream): rank r
      takes the documents at positions r, r + w, ...; each pass over it is an epoch, and a
      resume replays the stream up to where it was.
    """

    def __init__(self, docs, seed: int = 0, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.docs = self.factory = self.positioned = None
        if isinstance(docs, Sequence):
            self.docs = docs
            self.per_epoch = len(docs) // world_size
            if self.per_epoch == 0:
                raise ValueError(
                    f"the document list has {len(docs)} documents, fewer than world_size={world_size}: "
                    "every rank needs at least one (an empty corpus cannot be packed)"
                )
            self._perm_epoch, self._perm = -1, None
        elif all(hasattr(docs, name) for name in ("documents", "after", "read")):
            self.positioned = docs
        elif callable(docs):
            self.factory = docs
        else:
            raise TypeError(
                "docs must be a sequence of token lists, a positioned stream (data.ParquetDocuments), or a "
                "zero-argument function returning an iterable of token lists (wrap a one-shot iterator as "
                "`lambda: iterator` only if you never resume)"
            )
        self.rewind(0)

    def rewind(self, consumed: int, position=None) -> None:
        """Continue after the first ``consumed`` documents: a positioned stream from ``position``
        (the next document's, None for the start), a plain stream by replaying it to get there."""
        self.consumed = 0
        if self.positioned is not None:
            self.position = None if position is None else tuple(int(v) for v in position)
            self._it = self.positioned.documents(self.rank, self.world_size, self.position)
        elif self.factory is not None:
            self.epoch, self._it = 0, self._stream()
            for _ in range(consumed):
                self.next()
        self.consumed = consumed

    def _index(self, ordinal: int) -> int:
        """The corpus index of this rank's ``ordinal``-th document (list sources)."""
        epoch, pos = divmod(ordinal, self.per_epoch)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.docs), generator=g).tolist(), epoch
        return self._perm[pos * self.world_size + self.rank]

    def _stream(self):
        while True:
            seen = mine = 0
            for i, doc in enumerate(self.factory()):
                seen += 1
                if i % self.world_size == self.rank:
                    mine += 1
                    yield i, doc
            if not mine:
                raise ValueError("the document stream is empty: there is nothing to pack" if not seen else
                                 f"the document stream has {seen} documents, too few for rank {self.rank} of {self.world_size}")
            self.epoch += 1

    def next(self) -> Doc:
        """This rank's next document."""
        ordinal, where = self.consumed, None
        if self.docs is not None:
            index, epoch = self._index(ordinal), ordinal // self.per_epoch
            tokens = self.docs[index]
        elif self.positioned is not None:
            where, tokens = next(self._it)
            index, epoch = ordinal, where[0]
            self.position = self.positioned.after(where)
        else:
            index, tokens = next(self._it)
            epoch = self.epoch
        self.consumed += 1
        if len(tokens) == 0:
            raise ValueError(f"document {where or index} has no tokens; every document must start with its BOS token")
        return Doc(ordinal, len(tokens), tokens, index, epoch, where)

    def ends_a_read(self, doc: Doc) -> bool:
        """Whether ``doc`` is the last of its read (see READ_DOCS): the last document of a row group,
        or the last of a batch of READ_DOCS documents (of a row group, or of this rank's stream)."""
        if self.positioned is not None:
            return self.positioned.ends_read(doc.where, READ_DOCS)
        return (doc.ordinal + 1) % READ_DOCS == 0

    def fetch(self, ordinals: Sequence[int]) -> dict[int, Doc]:
        """Already-consumed documents, by ordinal (to restore a buffer); a plain stream is replayed."""
        if self.docs is not None:
            return {o: Doc(o, len(self.docs[i]), self.docs[i], i, o // self.per_epoch)
                    for o, i in ((o, self._index(o)) for o in ordinals)}
        if self.positioned is not None:
            raise ValueError("a positioned stream restores its documents from their positions (load_state_dict)")
        wanted, found = set(ordinals), {}
        replay = DocumentSource(self.factory, self.seed, self.rank, self.world_size)
        for _ in range(max(wanted, default=-1) + 1):
            doc = replay.next()
            if doc.ordinal in wanted:
                found[doc.ordinal] = doc
        return found

    def state_dict(self, held: Sequence[Doc]) -> dict:
        """Where the source is, and the documents a loader holds (plain ints and lists).

        ``buffer`` lists their ordinals; a positioned stream adds ``position`` (the next
        document's) and ``buffer_at`` (the held documents' positions), so a resume reads back
        only the row groups they sit in.
        """
        state = {"consumed": self.consumed, "buffer": [doc.ordinal for doc in held]}
        if self.positioned is not None:
            state["position"] = None if self.position is None else list(self.position)
            state["buffer_at"] = [list(doc.where) for doc in held]
        return state

    def load_state_dict(self, state: dict) -> list[Doc]:
        """Continue from ``state``; returns the held documents, in the order they were saved."""
        ordinals = [int(o) for o in state["buffer"]]
        if self.positioned is not None:
            if "position" not in state:
                raise ValueError("this loader state has no position in the shards (it was saved by an older version, "
                                 "which replayed the stream); restart the run, or resume it with that version")
            self.rewind(int(state["consumed"]), state["position"])
            wheres = [tuple(int(v) for v in w) for w in state["buffer_at"]]
            tokens = self.positioned.read(wheres)
            return [Doc(o, len(tokens[w]), tokens[w], o, w[0], w) for o, w in zip(ordinals, wheres)]
        self.rewind(int(state["consumed"]))
        found = self.fetch(ordinals)
        return [found[o] for o in ordinals]


# ---- the loader ------------------------------------------------------------------------------


class DocumentLoader:
    """Batches (x, y) of shape (B, T) whose rows are packed from whole documents.

    Same interface as ``data.TokenStreamLoader``: ``next_batch()``, ``state_dict()``,
    ``load_state_dict()``. ``stats`` says what it did; ``layout`` holds the last batch's rows
    as lists of ``Piece`` (which document, where, how many tokens) for inspection and tests.
    Padding positions hold ``pad_id`` in x and -1 in y.
    """

    def __init__(self, docs, batch_size: int, seq_len: int, policy: str = "bestfit", buffer_size: int = 1000,
                 seed: int = 0, rank: int = 0, world_size: int = 1, bos_id: int | None = None, pad_id: int = 0):
        check_args(batch_size, seq_len, policy, buffer_size)
        self.B, self.T, self.policy = batch_size, seq_len, policy
        self.buffer_size = buffer_size if policy == "bestfit" else 1  # greedy policies read in stream order
        self.bos_id, self.pad_id = bos_id, pad_id
        self.source = DocumentSource(docs, seed, rank, world_size)
        self.buffer, self.stats, self.layout = DocBuffer(), PackingStats(), []
        self.step = 0

    def _refill(self) -> None:
        """Top the buffer up to ``buffer_size`` documents, a whole read at a time, as run 1's loader."""
        while len(self.buffer) < self.buffer_size:
            while True:
                doc = self.source.next()
                if self.bos_id is not None and doc.tokens[0] != self.bos_id:
                    raise ValueError(f"document {doc.index} does not start with BOS (id {self.bos_id}); "
                                     "tokenize with encode_documents")
                self.buffer.push(doc)
                if self.source.ends_a_read(doc):
                    break

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Rows are built in numpy: single-threaded, so a busy CPU cannot stall torch's thread pool here.
        capacity = self.T + 1
        rows = np.full((self.B, capacity), self.pad_id, dtype=np.int64)
        filled = np.zeros(self.B, dtype=np.int64)  # document tokens per row; the rest is padding
        self.layout = []
        for r in range(self.B):
            pieces, pad = fill_row(self.buffer, capacity, self.policy, self._refill)
            self.stats.add_row(pieces, pad, capacity)
            pos, row_layout = 0, []
            for doc, take in pieces:
                rows[r, pos : pos + take] = doc.tokens[:take]
                row_layout.append(Piece(doc.index, doc.epoch, pos, take, doc.length))
                pos += take
            filled[r] = pos
            self.layout.append(row_layout)
        self.step += 1
        x, y = rows[:, :-1].copy(), rows[:, 1:].copy()
        y[np.arange(self.T)[None, :] + 1 >= filled[:, None]] = -1  # target position t is token t + 1 of the row
        return torch.from_numpy(x), torch.from_numpy(y)

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """Plain ints and lists: where the stream is, which documents wait in the buffer, the stats."""
        return {"step": self.step, **self.source.state_dict(self.buffer.docs), "stats": asdict(self.stats)}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.buffer = DocBuffer()
        for doc in self.source.load_state_dict(state):
            self.buffer.push(doc)
        self.stats = PackingStats(**state["stats"])


@dataclass
class Piece:
    """One document's piece in a row: columns [start, start + length) hold its first tokens."""

    index: int  # the document (its corpus index, or its position in one pass of the stream)
    epoch: int
    start: int
    length: int
    doc_length: int

    @property
    def cropped(self) -> bool:
        return self.length < self.doc_length


# ---- the 2019 loader on a stream too large to hold ---------------------------------------------


class ConsecutiveLoader:
    """The plain token stream (stages ``gpt2`` to ``value-embeddings``) on documents streamed from disk.

    ``data.TokenStreamLoader`` cuts rows at random offsets out of one stream held in memory;
    FineWeb-edu's shards do not fit in memory, and are already shuffled, so this loader reads
    them in order, as llm.c and nanochat's original loader do: documents concatenated (each
    starts with its BOS), every batch is the next ``B * T + 1`` tokens as B rows of T inputs
    and T targets (a row's last target is the next row's first input), and the window then
    moves on by ``B * T``. Rows start mid-document, as in 2019. Rank r reads its own documents
    (``DocumentSource``), so the ranks' rows are disjoint.

    ``state_dict()`` holds the documents whose tokens are not all used yet and how far into
    the first one the window is, so a resume (from a position in the shards) continues with
    exactly the next token.
    """

    def __init__(self, docs, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        check_args(batch_size, seq_len, "bestfit", 1)
        self.B, self.T = batch_size, seq_len
        self.source = DocumentSource(docs, seed, rank, world_size)
        self.pending: list[Doc] = []  # documents whose tokens are not all used yet, in stream order
        self.offset = 0  # tokens of pending[0] already used
        self.step = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        need, advance = self.B * self.T + 1, self.B * self.T
        have = sum(doc.length for doc in self.pending) - self.offset
        while have < need:
            self.pending.append(self.source.next())
            have += self.pending[-1].length
        parts = [np.asarray(self.pending[0].tokens[self.offset :], dtype=np.int64)]
        parts += [np.asarray(doc.tokens, dtype=np.int64) for doc in self.pending[1:]]
        flat = np.concatenate(parts)[:need]
        used = self.offset + advance  # at least one token is left over, so pending never empties
        while used >= self.pending[0].length:
            used -= self.pending.pop(0).length
        self.offset = used
        self.step += 1
        x, y = flat[:-1].reshape(self.B, self.T).copy(), flat[1:].reshape(self.B, self.T).copy()
        return torch.from_numpy(x), torch.from_numpy(y)

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"step": self.step, **self.source.state_dict(self.pending), "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.pending = self.source.load_state_dict(state)
        self.offset = int(state["offset"])
