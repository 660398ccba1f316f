"""The checks of chapter 10 fail on a stub, fail on plausible wrong answers, pass on the solution."""

import statistics

import pytest
import torch

from nanogpt_core.classroom.checks import CheckFailed
from nanogpt_core.classroom.checks.ablation_design import (
    SWITCHES,
    check_ablation,
    check_half_rope_tables,
)
from nanogpt_core.config import stage_config
from nanogpt_core.lab.ablations_negative import half_truncated_rotary_tables
from nanogpt_core.lab.results import paired_difference
from nanogpt_core.model import rotary_tables


def stub(*args, **kwargs):
    raise NotImplementedError


# ---- half-truncated RoPE tables -------------------------------------------------------------------


def rope_solution(seq_len, head_dim, base=1024.0):
    q = head_dim // 4
    theta = torch.cat([base ** -torch.linspace(0, 1, q), torch.zeros(q)])
    angles = torch.arange(seq_len).float()[:, None] * theta
    return angles.cos(), angles.sin()


def rope_fastest_quarter_of_base_10000(seq_len, head_dim, base=1024.0):
    """The course's earlier variant: plain RoPE's frequencies, the slowest half of the pairs set to zero."""
    cos, sin = rotary_tables(seq_len, head_dim)
    cos[:, head_dim // 4 :], sin[:, head_dim // 4 :] = 1.0, 0.0
    return cos, sin


def rope_zeros_first(seq_len, head_dim, base=1024.0):  # the rotating half in the wrong place
    cos, sin = rope_solution(seq_len, head_dim, base)
    q = head_dim // 4
    return torch.cat([cos[:, q:], cos[:, :q]], 1), torch.cat([sin[:, q:], sin[:, :q]], 1)


def rope_arange_exponent(seq_len, head_dim, base=1024.0):  # base^(-i/(D/4)): the last frequency falls short of 1/base
    q = head_dim // 4
    theta = torch.cat([base ** -(torch.arange(q) / q), torch.zeros(q)])
    angles = torch.arange(seq_len).float()[:, None] * theta
    return angles.cos(), angles.sin()


def rope_not_truncated(seq_len, head_dim, base=1024.0):  # linspace over all D/2 pairs, none left still
    theta = base ** -torch.linspace(0, 1, head_dim // 2)
    angles = torch.arange(seq_len).float()[:, None] * theta
    return angles.cos(), angles.sin()


def rope_float64(seq_len, head_dim, base=1024.0):
    return tuple(t.double() for t in rope_solution(seq_len, head_dim, base))


@pytest.mark.parametrize("wrong", [rope_fastest_quarter_of_base_10000, rope_zeros_first, rope_arange_exponent,
                                   rope_not_truncated, rope_float64])
def test_half_rope_rejects(wrong):
    with pytest.raises(CheckFailed):
        check_half_rope_tables(wrong)


def test_half_rope():
    with pytest.raises(CheckFailed, match="not implemented"):
        check_half_rope_tables(stub)
    assert check_half_rope_tables(rope_solution) is True
    with pytest.raises(CheckFailed, match="write it yourself"):  # the lab's variant, shown after the exercise
        check_half_rope_tables(half_truncated_rotary_tables)


def test_half_rope_messages_name_the_property():
    with pytest.raises(CheckFailed, match="must not rotate"):
        check_half_rope_tables(rope_zeros_first)
    with pytest.raises(CheckFailed, match="1/base"):
        check_half_rope_tables(rope_arange_exponent)


# ---- the ablation, checked for form -------------------------------------------------------------

BASE = stage_config("value-embeddings", "toy", compile=False, n_layer=1, n_embd=32, n_head=2, steps=4)


def ablation(run, *, variant=None, seeds=(0, 1, 2), hypothesis="Without qk_norm, attention logits grow and val bpb "
             "rises.", set_seed=True, verdict=None, sign=1, other_seeds=None):
    """The solution, with switches for the mistakes a student makes."""
    baseline = BASE
    variant = variant if variant is not None else BASE.replace(qk_norm=False)
    results = {"baseline": {}, "variant": {}}
    for s in seeds:
        results["baseline"][s] = run(baseline.replace(seed=s) if set_seed else baseline)
    for s in (other_seeds or seeds):
        results["variant"][s] = run(variant.replace(seed=s) if set_seed else variant)
    diffs = [results["variant"][s] - results["baseline"][s] for s in seeds if s in results["variant"]] or [0.0]
    mean = sign * statistics.mean(diffs)
    if verdict is None:
        verdict = "noise" if min(diffs) <= 0 <= max(diffs) else "real"
    elif verdict == "by the mean":
        verdict = "real" if abs(mean) > 0 else "noise"
    return dict(hypothesis=hypothesis, baseline=baseline, variant=variant, seeds=list(seeds), results=results,
                summary=dict(mean_difference=mean, verdict=verdict))


ABLATION_WRONGS = {
    "two switches at once (the whole muon stage's optimizer and schedule)":
        dict(variant=BASE.replace(optimizer="adamw", schedule="cosine")),
    "a field that is not a switch (the learning rate)": dict(variant=BASE.replace(matrix_lr=0.04)),
    "the same config on both sides": dict(variant=BASE),
    "one seed": dict(seeds=(0,)),
    "seeds never set on the runs": dict(set_seed=False),
    "different seeds on the two sides": dict(other_seeds=(3, 4, 5)),
    "a hypothesis that does not name the switch": dict(hypothesis="The variant will be worse."),
    "an empty hypothesis": dict(hypothesis=" "),
    "the verdict read from the mean alone": dict(verdict="by the mean"),
    "always 'noise'": dict(verdict="noise"),
    "baseline minus variant": dict(sign=-1),
}


@pytest.mark.parametrize("mistake", list(ABLATION_WRONGS))
def test_ablation_rejects(mistake):
    kw = ABLATION_WRONGS[mistake]
    with pytest.raises(CheckFailed):
        check_ablation(lambda run: ablation(run, **kw))


def test_ablation():
    with pytest.raises(CheckFailed, match="not implemented"):
        check_ablation(stub)
    assert check_ablation(ablation) is True
    # another switch, seeds in another order, a hypothesis that writes the switch with spaces
    assert check_ablation(lambda run: ablation(run, variant=BASE.replace(value_embeds=False), seeds=(7, 2),
                                               hypothesis="Value embeds off: higher bpb.")) is True
    assert "qk_norm" in SWITCHES and "loader" in SWITCHES and "lr" not in SWITCHES


def test_the_verdict_rule_is_the_labs():
    """The check's 'noise' is lab.results.paired_difference's 'noise' (the chapter's tables use the lab's)."""
    from nanogpt_core.classroom.checks.ablation_design import _verdict

    for a, b in (([1.0, 2.0], [1.1, 1.9]), ([1.0, 2.0], [1.1, 2.2]), ([3.0, 3.0, 3.0], [2.9, 2.8, 2.95])):
        lab = paired_difference(a, b)["verdict"]
        assert (lab == "noise") == (_verdict([y - x for x, y in zip(a, b)]) == "noise")
