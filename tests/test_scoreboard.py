"""The scoreboard's arithmetic on hand-made curves, and one tiny real run of two stages."""

import pytest

from nanogpt_core.lab.scoreboard import crossing, early_steps, format_table, plot, run_scoreboard, scoreboard, summarize


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


def test_summary_over_seeds_has_mean_spread_and_two_significant_figures():
    seed0 = scoreboard([run("gpt2", [(0, 3.0), (100, 2.0)]), run("compile", [(0, 3.0), (10, 2.0)])])
    seed1 = scoreboard([run("gpt2", [(0, 3.0), (100, 2.1)]), run("compile", [(0, 3.0), (10, 2.2)])])  # never reaches 2.1
    summary = summarize([seed0, seed1])
    assert summary[0]["speedup"]["mean"] == pytest.approx(1.0) and summary[0]["reached"] == 2
    assert summary[1]["reached"] == 1 and summary[1]["speedup"]["n"] == 1
    assert summary[1]["speedup"]["mean"] == pytest.approx(10.0)
    assert summary[1]["final_val_bpb"]["mean"] == pytest.approx(2.1)
    text = format_table(summary, [2.0, 2.1])
    assert "1/2" in text and "10 ± 0" in text


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
    for rows in board["rows_by_seed"]:
        for r in rows:
            assert r["steps"] >= 4 and r["final_val_bpb"] > 0 and r["tokens_per_second"] > 0
    assert len(cache.read_text().splitlines()) == 4
    again = run_scoreboard("toy", seconds=1.0, stages=["gpt2", "flash-attention"], data=small_data, seeds=(0, 1),
                           cache=cache, **kw)  # every run comes from the cache: identical figures
    assert again["targets"] == board["targets"]
    assert "equal training wall-time" in board["protocol"] and board["hardware"]
    plot(board)
