"""Checks for chapter 1 (tokens and bits): BPE training, and bits per byte.

    check_bpe_train(fn)           fn(ids: list[int], n_merges) -> (merges: {(a, b): new_id}, ids after the merges)
    check_bits_per_byte(fn)       fn(losses, targets, token_bytes) -> float
    check_most_frequent_pair(fn)  fn(ids: list[int]) -> (a, b), ties broken by the smallest pair
    check_merge(fn)               fn(ids: list[int], pair, new_id) -> list[int]

``check_bpe_train`` checks the training loop as a process: it runs the student's trainer for
0, 1, 2, ... merges on the same ids and compares, after every merge, the pair chosen, its new id
and the ids, with the package's ``bpe`` (``most_frequent_pair`` then ``merge``, repeated).
"""

from __future__ import annotations

import random

import torch

from ... import bpe
from ...evaluate import bits_per_byte, evaluate, nats_and_bytes
from ..watch import answered_by
from . import Case, CheckFailed, call_student, check_function


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


def reference_bpe_train(ids: list[int], n_merges: int) -> tuple[dict, list[int]]:
    """BPE training on one sequence (no chunks) with the package's pieces: the reference of the exercise.

    Equal to ``bpe.train_bpe`` when the whole text is one chunk (tests/test_exercises_foundation.py).
    """
    ids, merges = list(ids), {}
    for k in range(n_merges):
        if len(ids) < 2:
            break
        pair = bpe.most_frequent_pair(ids)
        merges[pair] = 256 + k
        ids = bpe.merge(ids, pair, 256 + k)
    return merges, ids


@answered_by(bpe.train_bpe, reference_bpe_train)
def check_bpe_train(student) -> bool:
    """Run ``student(ids, n)`` for n = 0, 1, 2, ... and compare every merge with the package's BPE.

    After merge k the check compares: how many merges were made (the loop stops when fewer than
    two ids are left), the pair merged (counting overlapping pairs, ties to the smallest pair),
    the id it got (256 + k), and the ids after the merge (left to right, no overlap).
    """
    rng = random.Random()
    cases = [
        ("bytes of 'aaabdaaabac', 4 merges", list(b"aaabdaaabac"), 4),
        ("a run of 9 equal bytes, 5 merges (overlapping pairs)", [7] * 9, 5),
        ("'abab', 4 merges (the text ends as one token before the last)", list(b"abab"), 4),
        ("a single byte, 2 merges (no pair to merge)", [65], 2),
    ]
    for n, alphabet, k in ((40, 3, 6), (200, 6, 12), (600, 20, 16)):
        base = rng.randrange(256 - alphabet)
        cases.append((f"random, {n} bytes from {alphabet} values, {k} merges",
                      [base + rng.randrange(alphabet) for _ in range(n)], k))
    name = "bpe_train"
    for what, ids, n_merges in cases:
        for n in range(n_merges + 1):
            expected_merges, expected_ids = reference_bpe_train(ids, n)
            got_merges, got_ids = _call_bpe_train(student, ids, n, what)
            where = f"{name}, case '{what}', n_merges={n}"
            got_items, expected_items = list(got_merges.items()), list(expected_merges.items())
            if len(got_items) != len(expected_items):
                raise CheckFailed(f"{where}: {len(got_items)} merges recorded, expected {len(expected_items)}"
                                  + (" (stop when no pair is left)" if len(got_items) < n else ""))
            if got_items[:-1] != expected_items[:-1]:
                raise CheckFailed(f"{where}: the merges before the last differ from the run with n_merges={n - 1}; "
                                  "a trainer must make the same first merges whatever n_merges is")
            if got_items:
                _compare_merge(where, ids, expected_merges, got_items[-1], expected_items[-1])
            if got_ids != expected_ids:
                first = next((i for i, (a, b) in enumerate(zip(got_ids, expected_ids)) if a != b),
                             min(len(got_ids), len(expected_ids)))
                raise CheckFailed(f"{where}: after the merges the ids differ from the reference (length {len(got_ids)}, "
                                  f"expected {len(expected_ids)}; first difference at position {first}); replace "
                                  "occurrences left to right, without overlap")
    print(f"✓ {name}: every merge of all {len(cases)} cases matches the reference (pair, new id, ids after it)")
    return True


def _call_bpe_train(student, ids, n, what):
    got = call_student(student, "bpe_train", f"bpe_train, case '{what}', n_merges={n}", list(ids), n)
    if not (isinstance(got, tuple) and len(got) == 2):
        raise CheckFailed(f"bpe_train must return a pair (merges, ids), got {type(got).__name__}")
    merges, out = got
    if not isinstance(merges, dict):
        raise CheckFailed(f"bpe_train: merges must be a dict {{(a, b): new_id}} in the order made, "
                          f"got {type(merges).__name__}")
    if not isinstance(out, (list, tuple)):
        raise CheckFailed(f"bpe_train: the ids must be a list of ints, got {type(out).__name__}")
    try:
        merges = {(int(p[0]), int(p[1])): int(v) for p, v in merges.items()}
    except (TypeError, ValueError, IndexError):
        raise CheckFailed("bpe_train: every key of merges must be a pair (a, b) of ints, every value an int") from None
    return merges, [int(x) for x in out]


def _compare_merge(where, ids, expected_merges, got, expected):
    """The last merge: same pair, same new id. Say how it differs without naming the right pair."""
    (got_pair, got_id), (pair, new_id) = got, expected
    if got_pair != pair:
        before = list(ids)
        for p, i in list(expected_merges.items())[:-1]:  # the ids just before this merge
            before = bpe.merge(before, p, i)
        counts = bpe.pair_counts(before)
        mine, best = counts.get(got_pair, 0), counts[pair]
        if mine == best:
            why = "it is tied with another pair for the highest count: apply the tie rule (the smallest pair)"
        elif mine == 0:
            why = "that pair does not occur in the ids at this point"
        else:
            why = (f"it occurs {mine} times among the adjacent pairs (overlapping ones included), but another "
                   f"pair occurs {best} times")
        raise CheckFailed(f"{where}: merge {len(expected_merges) - 1} chose {got_pair}; {why}")
    if got_id != new_id:
        raise CheckFailed(f"{where}: merge {len(expected_merges) - 1} gave its pair the id {got_id}; "
                          "the k-th merge (from 0) gets the id 256 + k")


@answered_by(bits_per_byte, nats_and_bytes, evaluate)
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
