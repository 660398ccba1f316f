"""Byte-pair encoding written out in plain Python: the reference that rustbpe is checked against.

Training starts from the UTF-8 bytes of the text, split into chunks by a regex, and repeats:

    count every adjacent pair (a, b) in every chunk;
    pick the most frequent pair, ties broken by the smallest (a, b), as rustbpe does;
    replace each occurrence of (a, b), left to right and without overlap, by a new id 256 + k.

It is slow (every merge recounts everything) and meant for small texts: chapter 1 and the
tests. ``nanogpt_core.tokenizer.train_tokenizer`` is the fast path used for training runs.
"""

from __future__ import annotations

from collections import Counter

import regex

from .tokenizer import SPLIT_PATTERN


def pair_counts(ids: list[int]) -> Counter:
    """How often each adjacent pair occurs in ``ids`` (overlapping pairs all count)."""
    return Counter(zip(ids, ids[1:]))


def most_frequent_pair(ids: list[int]) -> tuple[int, int]:
    """The most frequent adjacent pair; among equally frequent pairs, the smallest."""
    counts = pair_counts(ids)
    if not counts:
        raise ValueError("a sequence of fewer than 2 ids has no pairs")
    return min(counts, key=lambda pair: (-counts[pair], pair))


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``, scanning left to right."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_bpe(text: str, n_merges: int, pattern: str = SPLIT_PATTERN) -> dict[tuple[int, int], int]:
    """Learn ``n_merges`` merges from ``text``: {(a, b): new id}, in the order they were made.

    Pairs are counted inside regex chunks only, so no merge crosses a chunk boundary. Stops
    early if no pair is left (every chunk is a single token).
    """
    chunks = Counter(regex.findall(pattern, text))
    words = {chunk: list(chunk.encode("utf-8")) for chunk in chunks}
    merges: dict[tuple[int, int], int] = {}
    for k in range(n_merges):
        counts: Counter = Counter()
        for chunk, ids in words.items():
            for pair, c in pair_counts(ids).items():
                counts[pair] += c * chunks[chunk]
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))
        merges[pair] = 256 + k
        words = {chunk: merge(ids, pair, 256 + k) for chunk, ids in words.items()}
    return merges


def token_table(merges: dict[tuple[int, int], int]) -> dict[int, bytes]:
    """The bytes of every token: the 256 single bytes, then each merge's two halves joined."""
    table = {i: bytes([i]) for i in range(256)}
    for (a, b), new_id in merges.items():
        table[new_id] = table[a] + table[b]
    return table


def encode(text: str, merges: dict[tuple[int, int], int], pattern: str = SPLIT_PATTERN) -> list[int]:
    """Tokenize ``text``: in each chunk, apply the earliest-learned merge present until none is."""
    out = []
    for chunk in regex.findall(pattern, text):
        ids = list(chunk.encode("utf-8"))
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: merges.get(p, float("inf")))
            if pair not in merges:
                break
            ids = merge(ids, pair, merges[pair])
        out.extend(ids)
    return out


def decode(ids: list[int], merges: dict[tuple[int, int], int]) -> str:
    table = token_table(merges)
    return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")
