"""Checks for the data chapters' exercises (07 BOS-aligned loader, 08 BestFit-Crop packing).

- ``check_bestfit_row(fn)``: ``fn(lengths, capacity)`` fills ONE row of ``capacity`` tokens from
  a buffer of documents with the given lengths, BestFit-Crop style, and returns the pieces in
  placement order as ``[(buffer index, tokens taken), ...]``. Ties go to the lowest index. If
  the buffer runs out before the row is full, the row stops there (the rest would be padding).
- ``check_packing_stats(fn)``: ``fn(rows, lengths, capacity)`` gets a packing (``rows[r]`` is a
  list of ``(document, tokens taken)``) and returns ``(utilization, cropped_fraction)``:
  document tokens over row slots, and discarded tokens over the used documents' tokens.
"""

from __future__ import annotations

import random

from ...loaders import Doc, DocBuffer, fill_row, simulate_packing
from . import Case, check_function


def reference_bestfit_row(lengths: list[int], capacity: int) -> list[tuple[int, int]]:
    buffer = DocBuffer()
    for i, n in enumerate(lengths):
        buffer.push(Doc(i, n))
    pieces, _ = fill_row(buffer, capacity, "bestfit", refill=lambda: None)
    return [(doc.ordinal, take) for doc, take in pieces]


def reference_packing_stats(rows: list[list[tuple[int, int]]], lengths: list[int], capacity: int) -> tuple[float, float]:
    placed = sum(take for row in rows for _, take in row)
    used = sum(lengths[i] for row in rows for i, _ in row)
    return placed / (len(rows) * capacity), (used - placed) / used


def _bestfit_cases(rng: random.Random) -> list[Case]:
    cases = [
        Case("one document fills the row exactly", ([5, 9, 3], 9)),
        Case("the largest that fits goes first", ([2, 7, 4, 6], 10)),
        Case("nothing fits: the shortest is cropped", ([12, 15, 11], 10)),
        Case("ties go to the lowest index", ([4, 6, 4, 6, 3], 10)),
        Case("the buffer runs out before the row is full", ([2, 3], 10)),
    ]
    for k in range(4):
        lengths = [rng.randint(1, 40) for _ in range(rng.randint(3, 12))]
        cases.append(Case(f"random buffer {k + 1} ({len(lengths)} documents)", (lengths, rng.randint(8, 60))))
    return cases


def check_bestfit_row(fn) -> bool:
    """Compare ``fn(lengths, capacity)`` with BestFit-Crop for one row, on fixed and fresh random buffers."""
    return check_function(fn, reference_bestfit_row, _bestfit_cases(random.Random()), "bestfit_row")


def _packing_cases(rng: random.Random) -> list[Case]:
    cases = [
        Case("one full row, nothing cropped", ([[(0, 6), (1, 4)]], [6, 4], 10)),
        Case("a cropped document", ([[(0, 6), (1, 4)]], [6, 9], 10)),
        Case("a padded row", ([[(0, 6)], [(1, 10)]], [6, 10], 10)),
    ]
    for k in range(3):
        capacity = rng.randint(8, 40)
        lengths = [rng.randint(1, 2 * capacity) for _ in range(30)]
        policy = rng.choice(["bestfit", "greedy_pad"])
        _, rows = simulate_packing(lengths, capacity - 1, policy, buffer_size=6, rows=rng.randint(2, 6))
        cases.append(Case(f"random {policy} packing {k + 1} ({len(rows)} rows)", (rows, lengths, capacity)))
    return cases


def check_packing_stats(fn) -> bool:
    """Compare ``fn(rows, lengths, capacity)`` -> (utilization, cropped fraction) with the reference."""
    return check_function(fn, reference_packing_stats, _packing_cases(random.Random()), "packing_stats", atol=1e-9)
