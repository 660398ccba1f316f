"""The checks of chapters 09 and 10 fail on a stub, fail on plausible wrong answers, pass on the solution."""

import math

import pytest

from nanogpt_core.classroom.checks import CheckFailed
from nanogpt_core.classroom.checks.full_run import check_annual_factor, check_optimizer_state, check_tokens_and_steps


def stub(*args):
    raise NotImplementedError


def steps_solution(n, ratio, batch):
    steps = int(ratio * n) // batch
    return steps * batch, steps


def steps_rounded_up(n, ratio, batch):  # a partial last step does not exist
    steps = math.ceil(ratio * n / batch)
    return steps * batch, steps


def steps_float(n, ratio, batch):  # tokens not rounded to whole steps
    return ratio * n, ratio * n / batch


def state_solution(adam, muon, world):
    return (8 * adam + 4 * muon) / world


def state_unsharded(adam, muon, world):
    return 8 * adam + 4 * muon


def state_muon_like_adam(adam, muon, world):  # Muon keeps one buffer, not two
    return 8 * (adam + muon) / world


def annual_solution(start, end, years):
    return (end / start) ** (1 / years)


def annual_linear(start, end, years):  # the "40% a year" misreading: a linear share per year
    return 1 - (1 - end / start) / years


def annual_decline(start, end, years):  # the decline, 1 - r, instead of the factor r
    return 1 - (end / start) ** (1 / years)


@pytest.mark.parametrize("check, solution, wrongs", [
    (check_tokens_and_steps, steps_solution, [steps_rounded_up, steps_float]),
    (check_optimizer_state, state_solution, [state_unsharded, state_muon_like_adam]),
    (check_annual_factor, annual_solution, [annual_linear, annual_decline]),
])
def test_check(check, solution, wrongs):
    with pytest.raises(CheckFailed, match="not implemented"):
        check(stub)
    for wrong in wrongs:
        with pytest.raises(CheckFailed):
            check(wrong)
    assert check(solution) is True
