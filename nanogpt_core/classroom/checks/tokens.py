"""Checks for chapter 1 (tokens and bits): one BPE merge step, and bits per byte.

    check_most_frequent_pair(fn)  fn(ids: list[int]) -> (a, b), ties broken by the smallest pair
    check_merge(fn)               fn(ids: list[int], pair, new_id) -> list[int]
    check_bits_per_byte(fn)       fn(losses, targets, token_bytes) -> float
"""

from __future__ import annotations

import random

import torch

from ... import bpe
from ...evaluate import bits_per_byte
from . import Case, CheckFailed, check_function


def _random_ids(rng: random.Random, n: int, alphabet: int) -> list[int]:
    return [rng.randrange(alphabet) for _ in range(n)]


def check_most_frequent_pair(student) -> bool:
    """Compare ``student(ids)`` with the reference on fixed and fresh random sequences."""
    rng = random.Random()
    cases = [
        Case("bytes of 'aaabdaaabac'", (list(b"aaabdaaabac"),)),
        Case("a two-way tie: (5, 6) and (1, 2) occur twice each", ([5, 6, 9, 1, 2, 5, 6, 1, 2],)),
        Case("a run 'aaaa' (overlapping pairs all count)", ([7, 7, 7, 7, 3, 4, 3, 4, 3],)),
        Case("just two ids", ([300, 12],)),
    ]
    cases += [Case(f"random, {n} ids from {a} values", (_random_ids(rng, n, a),)) for n, a in ((50, 4), (200, 10), (1000, 30))]
    student_tuple = _as_tuple(student, "most_frequent_pair")
    return check_function(student_tuple, bpe.most_frequent_pair, cases, "most_frequent_pair")


def check_merge(student) -> bool:
    """Compare ``student(ids, pair, new_id)`` with the reference merge."""
    rng = random.Random()
    cases = [
        Case("merge (97, 97) in 'aaabdaaabac'", (list(b"aaabdaaabac"), (97, 97), 256)),
        Case("overlapping run 'aaa': merge left to right, no overlap", ([7, 7, 7], (7, 7), 300)),
        Case("pair at the very end", ([1, 2, 3, 1, 2], (1, 2), 99)),
        Case("pair not present", ([1, 2, 3], (3, 1), 99)),
        Case("empty sequence", ([], (1, 2), 99)),
    ]
    for n, a in ((50, 3), (500, 6)):
        ids = _random_ids(rng, n, a)
        cases.append(Case(f"random, {n} ids from {a} values", (ids, (ids[0], ids[1]), a + 1)))
    return check_function(_as_list(student), bpe.merge, cases, "merge")


def check_bits_per_byte(student) -> bool:
    """Compare ``student(losses, targets, token_bytes)`` with nanogpt_core.evaluate.bits_per_byte.

    Targets include the BOS id (0 bytes), which must not count, and tokens of various lengths.
    """
    g = torch.Generator().manual_seed(random.randrange(2**31))
    vocab, bos = 64, 63
    token_bytes = torch.randint(1, 8, (vocab,), generator=g)
    token_bytes[bos] = 0
    cases = []
    for shape, with_bos in (((40,), False), ((4, 30), True), ((8, 64), True)):
        targets = torch.randint(0, vocab - 1, shape, generator=g)
        if with_bos:
            targets.view(-1)[:: 7] = bos
        losses = torch.rand(shape, generator=g) * 6
        what = "with BOS targets (0 bytes)" if with_bos else "no BOS"
        cases.append(Case(f"losses of shape {tuple(shape)}, {what}", (losses, targets, token_bytes)))
    return check_function(_as_float(student), bits_per_byte, cases, "bits_per_byte", atol=1e-5, rtol=1e-5)


# ---- adapters: accept equivalent return types, reject wrong ones with a clear message ----------


def _as_tuple(fn, name):
    def wrapped(ids):
        got = fn(ids)
        if isinstance(got, list) and len(got) == 2:
            got = tuple(got)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise CheckFailed(f"{name} must return a pair (a, b) of ints, got {type(got).__name__}")
        return tuple(int(x) for x in got)

    return wrapped


def _as_list(fn):
    def wrapped(ids, pair, new_id):
        got = fn(list(ids), pair, new_id)
        if not isinstance(got, (list, tuple)):
            raise CheckFailed(f"merge must return a list of ints, got {type(got).__name__}")
        return [int(x) for x in got]

    return wrapped


def _as_float(fn):
    def wrapped(losses, targets, token_bytes):
        got = fn(losses, targets, token_bytes)
        if isinstance(got, torch.Tensor):
            if got.numel() != 1:
                raise CheckFailed(f"bits_per_byte must return one number, got a tensor of shape {tuple(got.shape)}")
            got = got.item()
        if not isinstance(got, (int, float)):
            raise CheckFailed(f"bits_per_byte must return a float, got {type(got).__name__}")
        return float(got)

    return wrapped
