"""Checks for the data chapters' exercises (07 BOS-aligned loader, 08 BestFit-Crop packing).

Chapter 7:

- ``check_bos_aligned_row(fn)``: ``fn(documents, capacity)`` reads documents (token lists, each
  starting with BOS) from the iterator ``documents`` and returns ONE row of exactly ``capacity``
  tokens: documents in stream order, each from its BOS; the one that does not fit is cropped to
  fill the row and its tail discarded; no document is read that the row does not use. Tested as
  a process: many rows in a row from one stream, the invariants checked after each row, and the
  rows compared with the package's loader (``loaders.fill_row``, policy ``greedy_crop``).
- ``check_document_positions(fn)``: ``fn(x, bos_id)`` gives, for inputs ``x`` (B, T), each
  position's distance from the latest BOS at or before it in its row (0 on a BOS), -1 where the
  row has no BOS up to there; int64, shape of ``x``.

Chapter 8:

- ``check_bestfit_row(fn)``: ``fn(buffer, capacity)`` fills ONE row of exactly ``capacity``
  tokens from ``buffer`` (a list of documents in arrival order) BestFit-Crop style, removes the
  documents it uses from ``buffer`` (the others stay, in order) and returns the row. Tested as a
  process: the same buffer over many rows, topped up with new documents between rows; after each
  row the row is exactly full, each choice is the best fit or the right crop, and the buffer
  holds what it should.
- ``check_crop_windows(fn)``: ``fn(rows, window, drain_start)`` measures the cropped fraction of a
  packing run per window of ``window`` rows (rows before ``drain_start`` only; an incomplete last
  window is dropped) and, apart, over the drain (rows from ``drain_start`` on, after the stream
  ran out); ``rows[r]`` is a list of ``(document length, tokens taken)``.
"""

from __future__ import annotations

import random

import torch

from ...loaders import Doc, DocBuffer, PackingStats, fill_row
from ...packing_sim import pack_to_the_end
from ..watch import answered_by
from . import Case, CheckFailed, call_student, check_function, compare_values

BOS = 4095  # the toy tokenizer's BOS id; any id works, the checks pass it where it matters


def _as_tokens(row, what: str) -> list[int]:
    """A row as a list of ints (a list, tuple, tensor or array is fine)."""
    if hasattr(row, "tolist") and not isinstance(row, (list, tuple)):  # a tensor or an array
        row = row.tolist()
    if not isinstance(row, (list, tuple)) or not all(isinstance(t, int) for t in row):
        raise CheckFailed(f"{what}: expected a list of token ids (ints), got {type(row).__name__}")
    return list(row)


def _call(fn, name: str, *args):
    return call_student(fn, name, name, *args)


# ---- chapter 7: the BOS-aligned row builder (greedy crop) ---------------------------------------


def _random_doc(rng: random.Random, max_len: int, uid: int) -> list[int]:
    """[BOS, uid, ...]: a document whose second token names it (for the messages), 1..max_len long."""
    n = rng.choice([1, 2, rng.randint(2, max_len), rng.randint(2, max_len), rng.randint(max_len, 3 * max_len)])
    return ([BOS, uid] + [rng.randrange(1, 1000) for _ in range(n - 2)])[:n]


class _CountingStream:
    """An iterator over documents that counts what was read (fresh copies, so nothing is shared)."""

    def __init__(self, docs):
        self.docs, self.read = docs, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.read >= len(self.docs):
            raise CheckFailed("bos_aligned_row read far more documents than its rows could use")
        self.read += 1
        return list(self.docs[self.read - 1])


def reference_greedy_rows(docs: list[list[int]], capacity: int, n_rows: int) -> list[tuple[list[int], int]]:
    """The package's greedy-crop rows over ``docs``: (row tokens, documents read so far) per row."""
    it, counter, buffer, out = iter(docs), iter(range(len(docs))), DocBuffer(), []
    read = 0

    def refill():
        nonlocal read
        if not buffer:
            tokens = next(it)
            buffer.push(Doc(next(counter), len(tokens), tokens))
            read += 1

    for _ in range(n_rows):
        pieces, pad = fill_row(buffer, capacity, "greedy_crop", refill)
        assert pad == 0
        out.append(([t for doc, take in pieces for t in doc.tokens[:take]], read))
    return out


@answered_by(fill_row, reference_greedy_rows)
def check_bos_aligned_row(fn, rows: int = 40) -> bool:
    """Run ``fn(documents, capacity)`` row after row on streams of random documents; check each row."""
    rng = random.Random()
    streams = [("short documents", 12, 4), ("documents around a row's length", 10, 10),
               ("documents longer than a row", 8, 20), ("random lengths", rng.randint(6, 40), rng.randint(3, 30))]
    for label, capacity, max_len in streams:
        docs = [_random_doc(rng, max_len, 5000 + i) for i in range(rows * capacity + 10)]
        reference = reference_greedy_rows(docs, capacity, rows)
        stream = _CountingStream(docs)
        for r, (expected, read_after) in enumerate(reference):
            before = stream.read
            where = f"bos_aligned_row, {label} (capacity {capacity}), row {r}"
            row = _as_tokens(_call(fn, where, stream, capacity), where)
            if len(row) != capacity:
                raise CheckFailed(f"{where}: {len(row)} tokens; every row holds exactly capacity = {capacity}")
            if row[0] != BOS:
                raise CheckFailed(f"{where}: the row does not start with BOS; a row must start at a document's beginning")
            read = docs[before : stream.read]
            if not read:
                raise CheckFailed(f"{where}: read no document from the stream")
            joined = [t for doc in read for t in doc]
            if row != joined[:capacity]:
                raise CheckFailed(f"{where}: the row is not the documents read for it, in stream order, each from "
                                  f"its BOS, with only the last one cropped")
            if sum(len(doc) for doc in read[:-1]) >= capacity:
                raise CheckFailed(f"{where}: read a document the row did not use; it is lost to every later row")
            if stream.read != read_after or row != expected:
                raise CheckFailed(f"{where}: differs from the package's row")
    print(f"✓ bos_aligned_row: {rows} rows on each of {len(streams)} streams match the package's loader, "
          "every row full and starting at a BOS")
    return True


# ---- chapter 7: where each token sits in its document ------------------------------------------


def reference_document_positions(x: torch.Tensor, bos_id: int) -> torch.Tensor:
    out = torch.full_like(x, -1)
    for b in range(x.shape[0]):
        last = -1
        for t in range(x.shape[1]):
            if x[b, t] == bos_id:
                last = t
            out[b, t] = t - last if last >= 0 else -1
    return out


def _positions_cases(rng: random.Random) -> list[Case]:
    def rows(b, t, p_bos, start_bos=False):
        g = torch.Generator().manual_seed(rng.randrange(2**31))
        x = torch.randint(0, 50, (b, t), generator=g)
        x[torch.rand(b, t, generator=g) < p_bos] = 7
        if start_bos:
            x[:, 0] = 7
        return x

    return [
        Case("one row starting at a BOS", (torch.tensor([[7, 3, 4, 7, 5, 6, 8]]), 7)),
        Case("a row that starts mid-document", (torch.tensor([[3, 4, 7, 5, 7, 7, 9]]), 7)),
        Case("rows without any BOS", (torch.tensor([[1, 2, 3], [4, 5, 6]]), 7)),
        Case("random rows, a few documents each", (rows(4, 32, 0.1), 7)),
        Case("random BOS-aligned rows", (rows(3, 24, 0.15, start_bos=True), 7)),
        Case("a batch of long rows", (rows(2, 300, 0.01), 7)),
    ]


@answered_by(reference_document_positions, "lab/bos_alignment.py:document_positions")
def check_document_positions(fn) -> bool:
    """Compare ``fn(x, bos_id)`` with the reference: exact integers, int64, the shape of ``x``."""
    return check_function(fn, reference_document_positions, _positions_cases(random.Random()), "document_positions")


# ---- chapter 8: BestFit-Crop's row filler ------------------------------------------------------


def _reference_choice(buffer: list[list[int]], space: int) -> tuple[int, bool]:
    """(index into buffer, True if it fits whole) of BestFit-Crop's next choice; ties: arrival order."""
    keyed = DocBuffer()
    for i, doc in enumerate(buffer):
        keyed.push(Doc(i, len(doc)))
    j = keyed.largest_fitting(space)
    return (keyed.docs[j].ordinal, True) if j is not None else (keyed.docs[keyed.shortest()].ordinal, False)


def reference_bestfit_row(buffer: list[list[int]], capacity: int) -> list[int]:
    """The package's BestFit-Crop row (``fill_row``, no refill within the row); removes the used documents."""
    keyed = DocBuffer()
    for i, doc in enumerate(buffer):
        keyed.push(Doc(i, len(doc), doc))
    pieces, _ = fill_row(keyed, capacity, "bestfit", refill=lambda: None)
    used = {doc.ordinal for doc, _ in pieces}
    buffer[:] = [doc for i, doc in enumerate(buffer) if i not in used]
    return [t for doc, take in pieces for t in doc.tokens[:take]]


@answered_by(fill_row, DocBuffer, reference_bestfit_row, _reference_choice)
def check_bestfit_row(fn, rows: int = 60) -> bool:
    """Fill row after row with ``fn(buffer, capacity)`` from one buffer that is topped up between rows."""
    rng = random.Random()
    runs = [("a small buffer", 16, 6, 12), ("many equal lengths (ties)", 12, 8, 6),
            ("documents longer than a row", 10, 5, 25), ("random", rng.randint(8, 50), rng.randint(3, 15), rng.randint(4, 60))]
    uid = 5000
    for label, capacity, size, max_len in runs:
        buffer: list[list[int]] = []
        for r in range(rows):
            while len(buffer) < size or sum(map(len, buffer)) < capacity:  # top up: the row can always be filled
                n = rng.randint(1, max_len) if label != "many equal lengths (ties)" else rng.choice([2, 3, 4, 6])
                buffer.append(([BOS, uid] + [rng.randrange(1, 1000) for _ in range(n)])[: max(n, 1)])
                uid += 1
            where = f"bestfit_row, {label} (capacity {capacity}), row {r}"
            theirs = [list(doc) for doc in buffer]
            row = _as_tokens(_call(fn, where, theirs, capacity), where)
            if len(row) != capacity:
                raise CheckFailed(f"{where}: {len(row)} tokens; a BestFit-Crop row is exactly full ({capacity} tokens)")
            pos, left = 0, [list(doc) for doc in buffer]
            while pos < capacity:  # replay the row choice by choice
                space = capacity - pos
                i, fits = _reference_choice(left, space)
                piece = left.pop(i)[:space]
                if row[pos : pos + len(piece)] != piece:
                    rule = ("some document fits whole: the row continues with the longest of them (ties: the "
                            "earliest in the buffer)") if fits else (
                            "no document fits: the row ends with the shortest one (ties: the earliest), cropped to "
                            "fill it exactly")
                    raise CheckFailed(f"{where}, at position {pos} ({space} positions left): {rule}")
                pos += len(piece)
            expected_row = reference_bestfit_row(buffer, capacity)
            if row != expected_row:
                raise CheckFailed(f"{where}: differs from the package's row")
            if theirs != buffer:
                if len(theirs) != len(buffer):
                    raise CheckFailed(f"{where}: afterwards the buffer holds {len(theirs)} documents, not {len(buffer)}: "
                                      "remove exactly the documents the row used, the cropped one too")
                if sorted(theirs) != sorted(buffer):
                    raise CheckFailed(f"{where}: afterwards the buffer does not hold the documents the row did not use "
                                      "(a row that ends with a single BOS token cannot show which document was cropped; "
                                      "the buffer can)")
                raise CheckFailed(f"{where}: afterwards the buffer holds the right documents, but not in their "
                                  "arrival order (do not reorder it)")
    print(f"✓ bestfit_row: {rows} rows on each of {len(runs)} streams of buffers, every row exactly full, "
          "every choice the best fit or the right crop")
    return True


# ---- chapter 8: the crop fraction in steady state, and the drain apart ------------------------------


def reference_crop_windows(rows: list[list[tuple[int, int]]], window: int, drain_start: int) -> tuple[list[float], float]:
    windows, stats = [], PackingStats()
    for r in range(drain_start - drain_start % window):
        stats.add_row([(Doc(0, length), take) for length, take in rows[r]], 0, 1)
        if stats.rows == window:
            windows.append(stats.crop_fraction)
            stats = PackingStats()
    drain = PackingStats()
    for row in rows[drain_start:]:
        drain.add_row([(Doc(0, length), take) for length, take in row], 0, 1)
    return windows, drain.crop_fraction


def _packing_run(rng: random.Random, capacity: int, n_docs: int, buffer_size: int, policy: str):
    """Rows of (length, taken) from packing ``n_docs`` random lengths to the end, and where the drain starts."""
    lengths = [rng.choice([rng.randint(1, capacity), rng.randint(capacity, 4 * capacity)]) for _ in range(n_docs)]
    run = pack_to_the_end(lengths, capacity - 1, policy, buffer_size)
    return run["rows"], run["drain_start"]


def _window_cases(rng: random.Random) -> list[Case]:
    cases = [
        Case("two windows of one row, no drain", ([[(6, 6), (9, 4)], [(12, 10)]], 1, 2)),
        Case("an incomplete last window, then a drain", ([[(6, 6), (9, 4)], [(3, 3), (9, 7)], [(10, 10)],
                                                          [(14, 10)], [(12, 5)]], 2, 3)),
        Case("no complete window", ([[(6, 6), (9, 4)], [(5, 5)]], 3, 2)),
    ]
    for k, policy in enumerate(("bestfit", "greedy_crop", "bestfit")):
        capacity = rng.randint(8, 40)
        rows, drain_start = _packing_run(rng, capacity, rng.randint(150, 300), rng.randint(4, 20), policy)
        window = rng.randint(3, 12)
        cases.append(Case(f"a random {policy} run {k + 1} ({len(rows)} rows, window {window})", (rows, window, drain_start)))
    return cases


@answered_by(reference_crop_windows, PackingStats, "lab/packing.py:crop_windows")
def check_crop_windows(fn) -> bool:
    """Compare ``fn(rows, window, drain_start)`` -> (per-window crop fractions, drain crop fraction)."""
    rng = random.Random()
    for case in _window_cases(rng):
        expected = reference_crop_windows(*case.args)
        got = _call(fn, f"crop_windows, case '{case.name}'", *case.args)
        where = f"crop_windows, case '{case.name}'"
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise CheckFailed(f"{where}: expected a pair (list of window fractions, drain fraction)")
        windows, drain = got
        if not isinstance(windows, (list, tuple)) or len(windows) != len(expected[0]):
            n = len(windows) if isinstance(windows, (list, tuple)) else type(windows).__name__
            raise CheckFailed(f"{where}: {n} windows, expected {len(expected[0])} (only complete windows of rows "
                              "before the drain count)")
        compare_values(list(windows), expected[0], f"{where}, the windows", atol=1e-9)
        compare_values(drain, expected[1], f"{where}, the drain", atol=1e-9)
    print("✓ crop_windows: every case matches the reference")
    return True
