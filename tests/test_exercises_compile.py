"""The chapter-4 check fails on a stub, on the graph-breaking original and on wrong values; passes the fix."""

import pytest
import torch

from nanogpt_core.classroom.checks import CheckFailed
from nanogpt_core.classroom.checks.compile import check_clip_rows, clip_rows_with_graph_break, graph_breaks


def solution(x, max_norm):
    norms = x.norm(dim=-1, keepdim=True)
    return x * (max_norm / norms).clamp(max=1.0)


def stub(x, max_norm):
    raise NotImplementedError


def clips_every_row(x, max_norm):  # no graph break, but scales rows that were within the bound up
    return x * (max_norm / x.norm(dim=-1, keepdim=True))


def item_break(x, max_norm):  # right values, but .item() leaves the graph
    norms = x.norm(dim=-1, keepdim=True)
    if norms.max().item() > max_norm:
        return x * (max_norm / norms).clamp(max=1.0)
    return x


def test_original_has_a_graph_break_and_the_solution_none():
    x = torch.randn(4, 8)
    assert graph_breaks(clip_rows_with_graph_break, x, 1.0)[0] >= 1
    assert graph_breaks(solution, x, 1.0)[0] == 0


def test_check_passes_on_solution():
    assert check_clip_rows(solution)


@pytest.mark.parametrize("wrong,message", [
    (stub, "not implemented"),
    (clip_rows_with_graph_break, "graph break"),
    (item_break, "graph break"),
    (clips_every_row, "values differ"),
])
def test_check_fails_on_wrong_answers(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check_clip_rows(wrong)
