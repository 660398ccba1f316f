"""A busy machine: each process uses the CPUs it has, and the grader deals them out to its jobs."""

import os

from nanogpt_core.classroom.grader import cpu_share
from nanogpt_core.hardware import cpu_threads
from nanogpt_core.lab import contention


def test_cpu_threads_is_the_affinity_mask():
    assert cpu_threads() == min(len(os.sched_getaffinity(0)), cpu_threads()) >= 1
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})  # as `taskset -c 0` would
        assert cpu_threads() == 1
    finally:
        os.sched_setaffinity(0, before)


def test_cpu_share_deals_disjoint_sets():
    cpus = sorted(os.sched_getaffinity(0))
    assert cpu_share(1) == [cpus]
    shares = cpu_share(len(cpus))
    assert len(shares) == len(cpus) and all(len(s) == 1 for s in shares)
    assert sorted(c for s in shares for c in s) == cpus  # one job per CPU, none shared
    more = cpu_share(2 * len(cpus))  # more jobs than CPUs: one CPU each, reused
    assert len(more) == 2 * len(cpus) and all(len(s) == 1 and s[0] in cpus for s in more)


def test_contention_lab_names_its_variants_and_competitors():
    assert {"compiled bf16", "eager fp32"} <= set(contention.VARIANTS)
    assert set(contention.COMPETITORS) == {"python", "torch"}
