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
fresh permutation (seeded), so no document is used twice within an epoch.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

POLICIES = ("greedy_crop", "greedy_pad", "bestfit")


# ---- the packing policies, on documents of any kind (only their length matters) -------------


@dataclass
class Doc:
    """A document in the buffer: its position in this rank's stream, length and tokens."""

    ordinal: int  # the n-th document this rank took from its stream (0, 1, 2, ...)
    length: int
    tokens: Sequence[int] | None = None  # None in length-only simulations
    index: int = -1  # where it sits in the corpus (list sources) or in one pass of the stream
    epoch: int = 0


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


def simulate_packing(lengths: Iterable[int], seq_len: int, policy: str = "bestfit", buffer_size: int = 1000,
                     rows: int | None = None) -> tuple[PackingStats, list[list[tuple[int, int]]]]:
    """Pack documents of the given lengths (no tokens) into rows of ``seq_len + 1``.

    Runs until ``rows`` rows are made, or until every document is used: at the end of
    ``lengths`` the buffer is drained, so all policies are charged for the same documents
    (the last row may end in padding). Returns the stats and the layout: per row, (ordinal, taken).
    """
    _check_args(1, seq_len, policy, buffer_size)
    capacity, it, counter = seq_len + 1, iter(lengths), itertools.count()
    buffer, stats, layout = DocBuffer(), PackingStats(), []
    want, exhausted = (buffer_size if policy == "bestfit" else 1), False

    def refill():
        nonlocal exhausted
        while len(buffer) < want and not exhausted:
            length = next(it, None)
            if length is None:
                exhausted = True
            elif length < 1:
                raise ValueError(f"document lengths must be >= 1, got {length}")
            else:
                buffer.push(Doc(next(counter), int(length)))

    while rows is None or stats.rows < rows:
        refill()
        if not buffer:
            break
        pieces, pad = fill_row(buffer, capacity, policy, refill)
        stats.add_row(pieces, pad, capacity)
        layout.append([(doc.ordinal, take) for doc, take in pieces])
    return stats, layout


def _check_args(batch_size: int, seq_len: int, policy: str, buffer_size: int) -> None:
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

    ``docs`` is either a sequence of token lists (random access: each epoch is a seeded
    permutation, rank r of w takes every w-th document of it, and an epoch ends after
    len(docs) // w documents, so all ranks stay in step), or a zero-argument callable that
    returns a fresh iterable of token lists (a stream, e.g. parquet shards already shuffled):
    rank r takes the documents at positions r, r + w, ...; each pass over it is an epoch.
    """

    def __init__(self, docs, seed: int = 0, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.seed, self.rank, self.world_size = seed, rank, world_size
        if isinstance(docs, Sequence):
            self.docs, self.factory = docs, None
            self.per_epoch = len(docs) // world_size
            if self.per_epoch == 0:
                raise ValueError(
                    f"the document list has {len(docs)} documents, fewer than world_size={world_size}: "
                    "every rank needs at least one (an empty corpus cannot be packed)"
                )
            self._perm_epoch, self._perm = -1, None
        elif callable(docs):
            self.docs, self.factory = None, docs
        else:
            raise TypeError(
                "docs must be a sequence of token lists, or a zero-argument function returning an iterable "
                "of token lists (wrap a one-shot iterator as `lambda: iterator` only if you never resume)"
            )
        self.rewind(0)

    def rewind(self, consumed: int) -> None:
        """Continue after the first ``consumed`` documents (a stream is replayed to get there)."""
        self.consumed = 0
        if self.factory is not None:
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
        ordinal = self.consumed
        if self.docs is not None:
            index, epoch = self._index(ordinal), ordinal // self.per_epoch
            tokens = self.docs[index]
        else:
            index, tokens = next(self._it)
            epoch = self.epoch
        self.consumed += 1
        if len(tokens) == 0:
            raise ValueError(f"document {index} has no tokens; every document must start with its BOS token")
        return Doc(ordinal, len(tokens), tokens, index, epoch)

    def fetch(self, ordinals: Sequence[int]) -> dict[int, Doc]:
        """Already-consumed documents, by ordinal (to restore a buffer); a stream is replayed."""
        if self.docs is not None:
            return {o: Doc(o, len(self.docs[i]), self.docs[i], i, o // self.per_epoch)
                    for o, i in ((o, self._index(o)) for o in ordinals)}
        wanted, found = set(ordinals), {}
        replay = DocumentSource(self.factory, self.seed, self.rank, self.world_size)
        for _ in range(max(wanted, default=-1) + 1):
            doc = replay.next()
            if doc.ordinal in wanted:
                found[doc.ordinal] = doc
        return found


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
        _check_args(batch_size, seq_len, policy, buffer_size)
        self.B, self.T, self.policy = batch_size, seq_len, policy
        self.buffer_size = buffer_size if policy == "bestfit" else 1  # greedy policies read in stream order
        self.bos_id, self.pad_id = bos_id, pad_id
        self.source = DocumentSource(docs, seed, rank, world_size)
        self.buffer, self.stats, self.layout = DocBuffer(), PackingStats(), []
        self.step = 0

    def _refill(self) -> None:
        while len(self.buffer) < self.buffer_size:
            doc = self.source.next()
            if self.bos_id is not None and doc.tokens[0] != self.bos_id:
                raise ValueError(f"document {doc.index} does not start with BOS (id {self.bos_id}); tokenize with encode_documents")
            self.buffer.push(doc)

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
        return {"step": self.step, "consumed": self.source.consumed,
                "buffer": [doc.ordinal for doc in self.buffer.docs], "stats": asdict(self.stats)}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.source.rewind(int(state["consumed"]))
        found = self.source.fetch([int(o) for o in state["buffer"]])
        self.buffer = DocBuffer()
        for doc in found.values():
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


# ---- throughput benchmark --------------------------------------------------------------------


def fineweb_like_lengths(n: int, seed: int = 0, mean: float = 1000.0, sigma: float = 1.1) -> list[int]:
    """Synthetic document lengths (tokens) with a web-like long tail: lognormal with the given mean.

    The defaults put 22.7% of the tokens beyond a 2049-token row, close to the 22.9% floor that
    nanochat measured on FineWeb-edu; the real length distribution itself is not public here.

    A lognormal with log-std ``sigma`` has mean exp(mu + sigma^2 / 2), so mu = ln(mean) - sigma^2 / 2.
    """
    g = torch.Generator().manual_seed(seed)
    mu = math.log(mean) - sigma**2 / 2
    lengths = torch.empty(n).log_normal_(mu, sigma, generator=g)
    return [max(2, int(v)) for v in lengths.tolist()]


def compare_policies(lengths: Sequence[int], seq_len: int, buffer_size: int = 1000) -> dict[str, dict]:
    """Pack the same documents with every policy: {policy: stats summary}, plus the cropping floor.

    Runs until the documents run out, so the figures are steady-state, not a warm-up.
    ``floor`` is the fraction of tokens beyond ``seq_len + 1`` in documents longer than a row:
    no policy that starts every document at the beginning of a row can keep them.
    """
    out = {p: simulate_packing(lengths, seq_len, p, buffer_size)[0].summary() for p in POLICIES}
    out["floor"] = sum(max(0, n - seq_len - 1) for n in lengths) / sum(lengths)
    return out


def benchmark(policy: str = "bestfit", docs=None, seq_len: int = 256, batch_size: int = 16, batches: int = 50,
              buffer_size: int = 1000) -> dict:
    """Time ``next_batch`` of a DocumentLoader: seconds per batch, documents/s and tokens/s."""
    loader = DocumentLoader(docs, batch_size, seq_len, policy, buffer_size)
    loader.next_batch()  # fill the buffer outside the timing
    used0, placed0 = loader.stats.docs_used, loader.stats.placed
    t0 = time.perf_counter()
    for _ in range(batches):
        loader.next_batch()
    dt = time.perf_counter() - t0
    return {"policy": policy, "seq_len": seq_len, "batch_size": batch_size, "buffer_size": buffer_size,
            "seconds_per_batch": dt / batches, "docs_per_s": (loader.stats.docs_used - used0) / dt,
            "tokens_per_s": (loader.stats.placed - placed0) / dt}


def toy_step_seconds(steps: int = 3) -> float:
    """Seconds per training step of the toy gpt2 stage (16 x 256 tokens), forward + backward + AdamW."""
    from .config import stage_config
    from .model import GPT
    from .optim import build_optimizer

    cfg = stage_config("gpt2", "toy")
    torch.manual_seed(0)
    model = GPT(cfg.model)
    opt = build_optimizer(model, cfg.train)
    x = torch.randint(0, cfg.model.vocab_size, (cfg.train.batch_size, cfg.model.seq_len))
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        model(x, x).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


def run_benchmark(json_path: str | None = None) -> dict:
    """Packing statistics (toy corpus at T=256, FineWeb-like lengths at T=2048) and loader throughput."""
    import datetime
    import platform

    from .data import toy_data
    from .train import describe_hardware

    toy = toy_data().train_docs
    web_lengths = fineweb_like_lengths(100_000)
    web = [np.zeros(n, dtype=np.int64) for n in web_lengths[:20_000]]  # token values do not matter for speed
    result = {
        "command": "python -m nanogpt_core.loaders",
        "hardware": describe_hardware(torch.device("cpu")),
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "toy": {"seq_len": 256, "documents": len(toy), "mean_length": sum(map(len, toy)) / len(toy),
                "policies": compare_policies([len(d) for d in toy], 256)},
        "fineweb_like": {"seq_len": 2048, "documents": len(web_lengths), "mean_length": sum(web_lengths) / len(web_lengths),
                         "lognormal": {"mean": 1000.0, "sigma": 1.1}, "policies": compare_policies(web_lengths, 2048)},
        "throughput": [benchmark(p, toy, 256, 16, 50) | {"corpus": "toy"} for p in POLICIES]
        + [benchmark(p, web, 2048, 16, 20) | {"corpus": "fineweb_like"} for p in POLICIES],
        "toy_step_seconds": toy_step_seconds(),
    }
    if json_path:
        import json
        from pathlib import Path

        Path(json_path).write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> None:
    """``python -m nanogpt_core.loaders [--json PATH]``: packing statistics and throughput."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m nanogpt_core.loaders", description=main.__doc__)
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    r = run_benchmark(parser.parse_args(argv).json)
    print(f"hardware: {r['hardware']}, {r['date']}")
    for name in ("toy", "fineweb_like"):
        c = r[name]
        print(f"\n{name}: {c['documents']} documents, mean {c['mean_length']:.0f} tokens, rows of T+1 = {c['seq_len'] + 1}; "
              f"cropping floor {c['policies']['floor']:.1%}")
        for p in POLICIES:
            s = c["policies"][p]
            print(f"  {p:11s} utilization {s['utilization']:6.1%}  cropped {s['crop_fraction']:6.1%}  padding {s['pad_fraction']:6.1%}")
    step = r["toy_step_seconds"]
    print(f"\nthroughput (toy training step: {step * 1e3:.0f} ms for 16 x 256 tokens)")
    for b in r["throughput"]:
        print(f"  {b['corpus']:12s} T={b['seq_len']:5d} {b['policy']:11s} {b['seconds_per_batch'] * 1e3:6.2f} ms/batch "
              f"({b['seconds_per_batch'] / step:6.2%} of a toy step)  {b['docs_per_s']:9,.0f} docs/s  {b['tokens_per_s']:11,.0f} tokens/s")


if __name__ == "__main__":
    main()
