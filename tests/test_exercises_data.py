"""The data chapters' exercise checks fail on a stub and on plausible wrong answers, and pass on solutions."""

import pytest
import torch

from nanogpt_core.classroom.checks import CheckFailed
from nanogpt_core.classroom.checks.data import (
    check_bestfit_row,
    check_bos_aligned_row,
    check_crop_windows,
    check_document_positions,
)
from nanogpt_core.lab.bos_alignment import (
    document_positions as package_document_positions,
)
from nanogpt_core.lab.packing import crop_windows as package_crop_windows


def stub(*args):
    raise NotImplementedError


# ---- 7.1 the BOS-aligned row builder ---------------------------------------------------------


def bos_aligned_row(documents, capacity):
    row = []
    while len(row) < capacity:
        doc = next(documents)
        row += doc[: capacity - len(row)]
    return row


def reads_one_too_many(documents, capacity):  # wrong: reads the next document before noticing the row is full
    row = []
    for doc in documents:
        if len(row) >= capacity:
            break
        row += doc[: capacity - len(row)]
    return row


def crops_the_start(documents, capacity):  # wrong: keeps the END of the document that does not fit
    row = []
    while len(row) < capacity:
        doc = next(documents)
        space = capacity - len(row)
        row += doc if len(doc) <= space else doc[-space:]
    return row


def one_short(documents, capacity):  # wrong: fills T tokens, forgetting the +1 of the shifted targets
    row = []
    while len(row) < capacity - 1:
        doc = next(documents)
        row += doc[: capacity - 1 - len(row)]
    return row


_tail = []


def carries_the_tail_over(documents, capacity):  # wrong: the cropped tail starts the next row (a token stream)
    row = _tail[:]
    _tail.clear()
    while len(row) < capacity:
        doc = next(documents)
        space = capacity - len(row)
        row += doc[:space]
        _tail.extend(doc[space:])
    row, rest = row[:capacity], row[capacity:]
    _tail[:0] = rest
    return row


def pads_instead_of_cropping(documents, capacity):  # wrong: drops the document that does not fit and pads
    row = []
    while len(row) < capacity:
        doc = next(documents)
        if len(doc) > capacity - len(row) and row:
            return row + [0] * (capacity - len(row))
        row += doc[:capacity]
    return row


def test_bos_aligned_row_passes_on_the_solution():
    assert check_bos_aligned_row(bos_aligned_row)


@pytest.mark.parametrize("wrong", [stub, reads_one_too_many, crops_the_start, one_short, carries_the_tail_over,
                                   pads_instead_of_cropping])
def test_bos_aligned_row_check_fails_on_wrong_answers(wrong):
    _tail.clear()
    with pytest.raises(CheckFailed):
        check_bos_aligned_row(wrong)


def test_a_stub_is_reported_as_not_implemented():
    with pytest.raises(CheckFailed, match="not implemented"):
        check_bos_aligned_row(stub)
    with pytest.raises(CheckFailed, match="not implemented"):
        check_bestfit_row(stub)


# ---- 7.2 where each token sits in its document -----------------------------------------------


def document_positions(x, bos_id):
    t = torch.arange(x.shape[1]).expand_as(x)
    last = torch.where(x == bos_id, t, -1).cummax(dim=1).values
    return torch.where(last >= 0, t - last, -1)


def counts_from_the_row_start(x, bos_id):  # wrong: the position in the row, not in the document
    return torch.arange(x.shape[1]).expand_as(x).clone()


def counts_from_the_first_bos(x, bos_id):  # wrong: the first BOS of the row, not the latest
    t = torch.arange(x.shape[1]).expand_as(x)
    is_bos = x == bos_id
    first = torch.where(is_bos.any(1), is_bos.int().argmax(1), x.shape[1])[:, None]
    return torch.where(t >= first, t - first, -1)


def zero_without_bos(x, bos_id):  # wrong: 0 where the document's start is not in the row
    return document_positions(x, bos_id).clamp(min=0)


def test_document_positions_passes_on_the_solution_and_refuses_the_labs_own():
    assert check_document_positions(document_positions)
    with pytest.raises(CheckFailed, match="write it yourself"):  # the lab's function is the answer
        check_document_positions(package_document_positions)


@pytest.mark.parametrize("wrong", [stub, counts_from_the_row_start, counts_from_the_first_bos, zero_without_bos,
                                   lambda x, b: document_positions(x, b).int()])
def test_document_positions_check_fails_on_wrong_answers(wrong):
    with pytest.raises(CheckFailed):
        check_document_positions(wrong)


# ---- 8.1 BestFit-Crop's row filler -----------------------------------------------------------


def _fill(buffer, capacity, pick_fit, pick_crop, put_tail_back=False):
    row = []
    while len(row) < capacity:
        space = capacity - len(row)
        fits = [i for i, d in enumerate(buffer) if len(d) <= space]
        i = pick_fit(buffer, fits) if fits else pick_crop(buffer)
        doc = buffer.pop(i)
        row += doc[:space]
        if put_tail_back and len(doc) > space:
            buffer.append(doc[space:])
    return row


def longest(buffer, fits):
    return max(fits, key=lambda i: (len(buffer[i]), -i))


def shortest(buffer):
    return min(range(len(buffer)), key=lambda i: (len(buffer[i]), i))


def bestfit_row(buffer, capacity):
    return _fill(buffer, capacity, longest, shortest)


def first_fit(buffer, capacity):  # wrong: the first document that fits, not the longest
    return _fill(buffer, capacity, lambda b, fits: fits[0], shortest)


def crops_the_longest(buffer, capacity):  # wrong: when nothing fits, crops the longest document
    return _fill(buffer, capacity, longest, lambda b: max(range(len(b)), key=lambda i: (len(b[i]), -i)))


def ties_to_the_latest(buffer, capacity):  # wrong: among equally long documents, takes the latest
    return _fill(buffer, capacity, lambda b, fits: max(fits, key=lambda i: (len(b[i]), i)), shortest)


def keeps_the_cropped_tail(buffer, capacity):  # wrong: puts the cropped tail back into the buffer
    return _fill(buffer, capacity, longest, shortest, put_tail_back=True)


def sorts_the_buffer(buffer, capacity):  # wrong: sorts the buffer in place (the arrival order is lost)
    buffer.sort(key=len, reverse=True)
    return _fill(buffer, capacity, longest, shortest)


def test_bestfit_row_passes_on_the_solution():
    assert check_bestfit_row(bestfit_row)


@pytest.mark.parametrize("wrong", [stub, first_fit, crops_the_longest, ties_to_the_latest, keeps_the_cropped_tail,
                                   sorts_the_buffer])
def test_bestfit_check_fails_on_wrong_answers(wrong):
    with pytest.raises(CheckFailed):
        check_bestfit_row(wrong)


# ---- 8.2 the crop fraction per window, the drain apart ---------------------------------------


def crop_windows(rows, window, drain_start):
    def frac(rs):
        total = sum(n for row in rs for n, _ in row)
        return (total - sum(t for row in rs for _, t in row)) / total if total else 0.0

    ends = range(window, drain_start + 1, window)
    return [frac(rows[e - window : e]) for e in ends], frac(rows[drain_start:])


def running_fraction(rows, window, drain_start):  # wrong: the crop so far, not per window
    def frac(rs):
        total = sum(n for row in rs for n, _ in row)
        return (total - sum(t for row in rs for _, t in row)) / total if total else 0.0

    return [frac(rows[:e]) for e in range(window, drain_start + 1, window)], frac(rows[drain_start:])


def cropped_over_placed(rows, window, drain_start):  # wrong: divides by the tokens placed
    def frac(rs):
        placed = sum(t for row in rs for _, t in row)
        return (sum(n for row in rs for n, _ in row) - placed) / placed if placed else 0.0

    return [frac(rows[e - window : e]) for e in range(window, drain_start + 1, window)], frac(rows[drain_start:])


def drain_in_the_windows(rows, window, drain_start):  # wrong: windows run over the drain rows too
    return crop_windows(rows, window, len(rows))[0], crop_windows(rows, window, drain_start)[1]


def test_crop_windows_passes_on_the_solution_and_refuses_the_labs_own():
    assert check_crop_windows(crop_windows)
    with pytest.raises(CheckFailed, match="write it yourself"):  # the lab's function is the answer
        check_crop_windows(package_crop_windows)


@pytest.mark.parametrize("wrong", [stub, running_fraction, cropped_over_placed, drain_in_the_windows])
def test_crop_windows_check_fails_on_wrong_answers(wrong):
    with pytest.raises(CheckFailed):
        check_crop_windows(wrong)
