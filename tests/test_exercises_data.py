"""The data chapters' exercise checks fail on a stub and on plausible wrong answers, and pass on solutions."""

import pytest

from nanogpt_core.classroom.checks import CheckFailed
from nanogpt_core.classroom.checks.data import check_bestfit_row, check_packing_stats


def bestfit_row(lengths, capacity):
    left, pieces, space = list(range(len(lengths))), [], capacity
    while space > 0 and left:
        fits = [i for i in left if lengths[i] <= space]
        i = max(fits, key=lambda i: (lengths[i], -i)) if fits else min(left, key=lambda i: (lengths[i], i))
        left.remove(i)
        pieces.append((i, min(lengths[i], space)))
        space -= pieces[-1][1]
    return pieces


def first_fit_row(lengths, capacity):  # wrong: the first document that fits, not the largest
    left, pieces, space = list(range(len(lengths))), [], capacity
    while space > 0 and left:
        fits = [i for i in left if lengths[i] <= space]
        i = fits[0] if fits else min(left, key=lambda i: (lengths[i], i))
        left.remove(i)
        pieces.append((i, min(lengths[i], space)))
        space -= pieces[-1][1]
    return pieces


def crop_longest_row(lengths, capacity):  # wrong: crops the longest document when nothing fits
    left, pieces, space = list(range(len(lengths))), [], capacity
    while space > 0 and left:
        fits = [i for i in left if lengths[i] <= space]
        i = max(fits, key=lambda i: (lengths[i], -i)) if fits else max(left, key=lambda i: (lengths[i], -i))
        left.remove(i)
        pieces.append((i, min(lengths[i], space)))
        space -= pieces[-1][1]
    return pieces


def packing_stats(rows, lengths, capacity):
    placed = sum(t for row in rows for _, t in row)
    used = sum(lengths[i] for row in rows for i, _ in row)
    return placed / (len(rows) * capacity), (used - placed) / used


def crop_over_slots(rows, lengths, capacity):  # wrong: cropped tokens over row slots
    placed = sum(t for row in rows for _, t in row)
    used = sum(lengths[i] for row in rows for i, _ in row)
    return placed / (len(rows) * capacity), (used - placed) / (len(rows) * capacity)


def all_lengths_used(rows, lengths, capacity):  # wrong: counts every document, used or not
    placed = sum(t for row in rows for _, t in row)
    return placed / (len(rows) * capacity), (sum(lengths) - placed) / sum(lengths)


def stub(*args):
    raise NotImplementedError


def test_solutions_pass():
    assert check_bestfit_row(bestfit_row)
    assert check_packing_stats(packing_stats)


@pytest.mark.parametrize("wrong", [stub, first_fit_row, crop_longest_row, lambda lengths, c: [n for n in lengths]])
def test_bestfit_check_fails_on_wrong_answers(wrong):
    with pytest.raises(CheckFailed):
        check_bestfit_row(wrong)


@pytest.mark.parametrize("wrong", [stub, crop_over_slots, all_lengths_used, lambda rows, lengths, c: 1.0])
def test_packing_check_fails_on_wrong_answers(wrong):
    with pytest.raises(CheckFailed):
        check_packing_stats(wrong)


def test_a_stub_is_reported_as_not_implemented():
    with pytest.raises(CheckFailed, match="not implemented"):
        check_bestfit_row(stub)
