"""The scoreboard's arithmetic on hand-made curves, and one tiny real run of two stages."""

import os
from pathlib import Path

import pytest

from nanogpt_core.lab.scoreboard import (bpb_at, crossing, early_steps, format_table, fresh_compile_caches, largest_rise,
                                         plot, run_scoreboard, scoreboard, summarize)


def run(stage, curve, compile_seconds=0.0):
    val = [{"step": 10 * i, "seconds": float(s), "bpb": b} for i, (s, b) in enumerate(curve)]
    return dict(stage=stage, val=val, final_val_bpb=val[-1]["bpb"], wall_seconds=val[-1]["seconds"], steps=val[-1]["step"],
                tokens_per_second=1000.0, compile_seconds=compile_seconds)


def test_crossing_interpolates_between_evaluations():
    val = run("x", [(0, 3.0), (10, 2.0), (20, 1.0)])["val"]
    assert crossing(val, 1.5, "seconds") == pytest.approx(15.0)
    assert crossing(val, 1.5, "step") == pytest.approx(15.0)
    assert crossing(val, 2.0, "seconds") == pytest.approx(10.0)
    assert crossing(val, 0.5, "seconds") is None
    assert crossing(val, 3.5, "seconds") == 0.0


def test_speedup_is_baseline_time_over_time_to_target_with_compile_included():
    base = run("gpt2", [(0, 3.0), (50, 2.5), (100, 2.0)])
    fast = run("compile", [(0, 3.0), (10, 2.0), (20, 1.5)], compile_seconds=5.0)
    never = run("worse", [(0, 3.0), (100, 2.4)])
    rows = scoreboard([base, fast, never])
    assert rows[0]["speedup"] == pytest.approx(1.0)
    assert rows[1]["seconds_to_target"] == pytest.approx(15.0) and rows[1]["speedup"] == pytest.approx(100 / 15)
    assert rows[2]["speedup"] is None and rows[2]["seconds_to_target"] is None


def test_an_easier_target_reads_the_same_runs_at_the_baselines_bpb_after_some_seconds():
    base = run("gpt2", [(0, 3.0), (50, 2.5), (100, 2.0)], compile_seconds=1.0)
    fast = run("compile", [(0, 3.0), (10, 2.0), (20, 1.5)], compile_seconds=5.0)
    assert bpb_at(base["val"], 25) == pytest.approx(2.75)
    with pytest.raises(ValueError, match="ends at 100 s"):
        bpb_at(base["val"], 150)
    rows = scoreboard([base, fast], baseline_seconds=25)  # target 2.75: fast crosses it at 2.5 s, plus 5 s compile
    assert rows[0]["speedup"] == pytest.approx(1.0) and rows[0]["seconds_to_target"] == pytest.approx(26.0)
    assert rows[1]["seconds_to_target"] == pytest.approx(7.5) and rows[1]["speedup"] == pytest.approx(26 / 7.5)
    # against the end of the baseline (2.0 at 100 s) the same compile weighs less
    assert scoreboard([base, fast])[1]["speedup"] == pytest.approx(101 / 15)


def test_summary_over_seeds_has_mean_spread_and_two_significant_figures():
    seed0 = scoreboard([run("gpt2", [(0, 3.0), (100, 2.0)]), run("compile", [(0, 3.0), (10, 2.0)])])
    seed1 = scoreboard([run("gpt2", [(0, 3.0), (100, 2.1)]), run("compile", [(0, 3.0), (10, 2.2)])])  # never reaches 2.1
    summary = summarize([seed0, seed1])
    assert summary[0]["speedup"]["mean"] == pytest.approx(1.0) and summary[0]["reached"] == 2
    assert summary[1]["reached"] == 1 and summary[1]["speedup"]["n"] == 1
    assert summary[1]["speedup"]["mean"] == pytest.approx(10.0)
    assert summary[1]["final_val_bpb"]["mean"] == pytest.approx(2.1)
    text = format_table(summary, [2.0, 2.1])
    assert "1/2" in text and "10 (1 seed)" in text  # one seed reached it: no spread to show
    assert "1 (baseline)" in text and "± 0.000" not in text and "1 ± 0" not in text


def test_a_stage_stopped_at_the_target_has_a_speedup_but_no_final_bpb():
    base = run("gpt2", [(0, 3.0), (100, 2.0)])
    stopped = {**run("compile", [(0, 3.0), (10, 2.5), (20, 1.9)]), "final_val_bpb": None}
    summary = summarize([scoreboard([base, stopped])])
    assert summary[1]["speedup"]["mean"] == pytest.approx(100 / 18.333, rel=1e-3)
    assert summary[1]["seconds_to_target"]["mean"] == pytest.approx(18.333, rel=1e-3)
    assert summary[1]["final_val_bpb"] is None and summary[0]["final_val_bpb"]["mean"] == 2.0
    assert "stopped at target" in format_table(summary, [2.0]).splitlines()[-1]


def test_largest_rise_counts_only_after_the_warmup():
    assert largest_rise([8.0, 9.0, 7.0, 6.5, 6.9, 6.0], after=2) == pytest.approx(0.4)
    assert largest_rise([8.0, 9.0, 7.0], after=0) == pytest.approx(1.0)
    assert largest_rise([8.0], after=0) == 0.0


def test_fresh_compile_caches_gives_an_empty_inductor_dir_and_restores_the_old_one(monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/else")
    with fresh_compile_caches():
        fresh = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
        assert fresh.is_dir() and not any(fresh.iterdir()) and str(fresh) != "/somewhere/else"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/else" and not fresh.exists()


def test_fresh_compile_caches_forgets_what_inductor_built_earlier_in_the_process():
    """Inductor memoizes its compiled kernels by their source in this process: a stage compiled after
    another with the same kernels would otherwise count a warm compile as cold."""
    from torch._inductor.codecache import PyCodeCache

    PyCodeCache.modules_no_attr["a kernel compiled before"] = object()
    with fresh_compile_caches():
        assert "a kernel compiled before" not in PyCodeCache.modules_no_attr


def test_train_stops_at_the_first_evaluation_at_or_below_the_finish_line(tiny_cfg, small_data):
    from nanogpt_core.train import train

    cfg = tiny_cfg.replace(steps=12, eval_every=3)
    _, full = train(cfg, small_data, progress=False)
    line = full.val[2]["bpb"]  # reached at step 6 (the curve falls; a later eval could be lower)
    first = next(v for v in full.val if v["bpb"] <= line)
    _, stopped = train(cfg, small_data, progress=False, stop_at_bpb=line)
    assert stopped.steps == first["step"] < cfg.train.steps
    assert [v["bpb"] for v in stopped.val] == [v["bpb"] for v in full.val[:len(stopped.val)]]  # the same run, cut
    assert stopped.val[-1]["bpb"] <= line and stopped.final_val_bpb is None
    assert full.final_val_bpb is not None


def test_early_evaluations_resolve_a_fast_crossing():
    assert early_steps(20) == (1, 2, 3, 4, 5, 8, 11, 15)
    assert all(s < 20 for s in early_steps(20)) and early_steps(1) == ()


def test_tiny_real_scoreboard_with_seeds_and_cache(small_data, tmp_path):
    kw = dict(vocab_size=512, n_layer=1, n_head=2, n_embd=32, seq_len=32, batch_size=8, eval_tokens=1024)
    cache = tmp_path / "runs.jsonl"
    board = run_scoreboard("toy", seconds=1.0, stages=["gpt2", "flash-attention"], data=small_data, seeds=(0, 1),
                           cache=cache, **kw)
    assert [r["stage"] for r in board["summary"]] == ["gpt2", "flash-attention"]
    assert [[r["seed"] for r in rows] for rows in board["rows_by_seed"]] == [[0, 0], [1, 1]]
    assert board["summary"][0]["speedup"]["mean"] == pytest.approx(1.0, rel=0.3)  # the baseline reaches its own bpb
    for rows, target in zip(board["rows_by_seed"], board["targets"]):
        assert rows[0]["final_val_bpb"] == target  # the baseline runs its whole budget
        for r in rows:
            assert r["steps"] >= 1 and r["tokens_per_second"] > 0
            if r["final_val_bpb"] is None:  # stopped at the target, before its planned steps
                assert r["seconds_to_target"] is not None and r["steps"] < r["planned_steps"]
            else:
                assert r["steps"] == r["planned_steps"] >= 4
    assert len(cache.read_text().splitlines()) == 4
    again = run_scoreboard("toy", seconds=1.0, stages=["gpt2", "flash-attention"], data=small_data, seeds=(0, 1),
                           cache=cache, **kw)  # every run comes from the cache: identical figures
    assert again["targets"] == board["targets"]
    assert "equal training wall-time" in board["protocol"] and board["hardware"]
    plot(board)
    run_out = run_scoreboard("toy", seconds=1.0, stages=["gpt2", "flash-attention"], data=small_data, seeds=(0,),
                             cache=cache, stop_at_target=False, **kw)  # another protocol: not from the cache
    assert len(cache.read_text().splitlines()) == 6
    assert all(r["final_val_bpb"] is not None for r in run_out["rows_by_seed"][0])
