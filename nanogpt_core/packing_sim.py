"""Packing simulations: the loaders' policies (``loaders.fill_row``) on document lengths alone.

A finite stream of lengths feeds a buffer; rows are filled until the rows wanted are made or every
document is used (at the end the buffer drains, so all policies are charged for the same
documents). Chapter 8's figures and its exercise check measure the policies with these, on
lengths drawn from a distribution, without tokenizing anything.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable

from .loaders import Doc, DocBuffer, PackingStats, check_args, fill_row


class FiniteStream:
    """A finite list of document lengths feeding a buffer: ``refill()`` tops it up to ``want``
    documents (1 for the greedy policies, the buffer size for BestFit-Crop) until the lengths
    run out, after which ``exhausted`` is True and the buffer only drains."""

    def __init__(self, lengths: Iterable[int], policy: str, buffer_size: int):
        self.buffer, self.exhausted = DocBuffer(), False
        self.want = buffer_size if policy == "bestfit" else 1
        self._it, self._counter = iter(lengths), itertools.count()

    def refill(self) -> None:
        while len(self.buffer) < self.want and not self.exhausted:
            length = next(self._it, None)
            if length is None:
                self.exhausted = True
            elif length < 1:
                raise ValueError(f"document lengths must be >= 1, got {length}")
            else:
                self.buffer.push(Doc(next(self._counter), int(length)))


def simulate_packing(lengths: Iterable[int], seq_len: int, policy: str = "bestfit", buffer_size: int = 1000,
                     rows: int | None = None) -> tuple[PackingStats, list[list[tuple[int, int]]]]:
    """Pack documents of the given lengths (no tokens) into rows of ``seq_len + 1``.

    Runs until ``rows`` rows are made, or until every document is used: at the end of
    ``lengths`` the buffer is drained, so all policies are charged for the same documents
    (the last row may end in padding). Returns the stats and the layout: per row, (ordinal, taken).
    """
    check_args(1, seq_len, policy, buffer_size)
    capacity, stream = seq_len + 1, FiniteStream(lengths, policy, buffer_size)
    stats, layout = PackingStats(), []
    while rows is None or stats.rows < rows:
        stream.refill()
        if not stream.buffer:
            break
        pieces, pad = fill_row(stream.buffer, capacity, policy, stream.refill)
        stats.add_row(pieces, pad, capacity)
        layout.append([(doc.ordinal, take) for doc, take in pieces])
    return stats, layout


def pack_to_the_end(lengths: Iterable[int], seq_len: int, policy: str = "bestfit", buffer_size: int = 1000) -> dict:
    """Pack a finite stream of document lengths until every document is used, row by row.

    Returns ``rows`` (per row, (length, taken) of its pieces), ``drain_start`` (the first row filled
    after the stream ran out), ``docs_used`` (documents taken out of the buffer after each row) and
    ``long_share`` (the share of the buffer longer than a row, before each row).
    """
    capacity, stream = seq_len + 1, FiniteStream(lengths, policy, buffer_size)
    buffer = stream.buffer
    rows, docs_used, long_share, drain_start, used = [], [], [], None, 0
    while True:
        stream.refill()
        if not buffer:
            break
        if stream.exhausted and drain_start is None:
            drain_start = len(rows)
        fitting = bisect.bisect(buffer.keys, (capacity, math.inf))  # the buffer is sorted by length
        long_share.append((len(buffer) - fitting) / len(buffer))
        pieces, _ = fill_row(buffer, capacity, policy, stream.refill)
        used += len(pieces)
        rows.append([(doc.length, take) for doc, take in pieces])
        docs_used.append(used)
    return {"rows": rows, "drain_start": len(rows) if drain_start is None else drain_start,
            "docs_used": docs_used, "long_share": long_share}
