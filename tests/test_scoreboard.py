"""The scoreboard's arithmetic on hand-made curves, and one tiny real run of two stages."""

import pytest

from nanogpt_core.lab.scoreboard import crossing, format_table, plot, run_scoreboard, scoreboard


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
    text = format_table(rows, 2.0)
    assert "compile" in text and "6.67" in text and "-" in text.splitlines()[-1]
    plot([base, fast, never], rows)


def test_tiny_real_scoreboard(small_data):
    board = run_scoreboard("toy", seconds=1.0, stages=["gpt2", "flash-attention"], data=small_data, vocab_size=512,
                           n_layer=1, n_head=2, n_embd=32, seq_len=32, batch_size=8, eval_tokens=1024)
    assert [r["stage"] for r in board["rows"]] == ["gpt2", "flash-attention"]
    assert board["rows"][0]["speedup"] == pytest.approx(1.0, rel=0.3)  # the baseline reaches its own bpb at its end
    for r in board["rows"]:
        assert r["steps"] >= 4 and r["final_val_bpb"] > 0 and r["tokens_per_second"] > 0
    assert "equal training wall-time" in board["protocol"] and board["hardware"]
