"""Chapter 2's stability lab: what counts as a spike, the per-rate summary, and the scoreboard-budget runs."""

import math

import pytest

from nanogpt_core.lab import baseline_stability as bs


def test_a_spike_is_a_rise_above_the_threshold_after_warmup():
    losses = [8.3, 7.9, 8.5, 7.0, 6.9, 7.3, 6.8, 9.4, 6.9]
    assert bs.spikes(losses) == [3, 6, 8]  # 1-based steps whose loss rose more than 0.3 nats
    assert bs.spikes(losses, after=4) == [6, 8]  # the warmup's rises do not count
    s = bs.stability(losses, warmup=4, vocab_size=4096)
    assert s["n_spikes"] == 2 and s["max_rise"] == pytest.approx(2.6)
    assert s["above_uniform"] and not s["stable"]  # 9.4 > ln 4096 = 8.32
    calm = bs.stability([8.3, 7.9, 7.5, 7.6, 7.2], warmup=1, vocab_size=4096)
    assert calm["stable"] and calm["n_spikes"] == 0 and calm["max_rise"] == pytest.approx(0.1)


def test_summary_pairs_every_rate_and_flags_a_best_rate_at_the_grid_edge():
    def r(lr, seed, bpb):
        return {"lr": lr, "seed": seed, "final_val_bpb": bpb, "n_spikes": int(lr > 5e-4), "stable": lr < 5e-4,
                "max_rise": 0.1, "max_loss_after_warmup": 7.0}

    runs = [r(lr, s, bpb + 0.01 * s) for s in (0, 1, 2) for lr, bpb in ((3e-4, 3.0), (6e-4, 2.9), (1e-3, 2.95))]
    out = bs.summarize(runs, [3e-4, 6e-4, 1e-3], [0, 1, 2])
    assert out["best_mean_bpb_lr"] == "0.0006" and not out["best_at_edge"]
    assert set(out["paired"]) == {"lr 0.0006 - lr 0.0003", "lr 0.001 - lr 0.0003", "lr 0.001 - lr 0.0006"}
    assert out["paired"]["lr 0.0006 - lr 0.0003"]["mean"] == pytest.approx(-0.1)
    assert out["per_lr"]["0.001"]["spikes"] == 3 and out["per_lr"]["0.0003"]["stable_seeds"] == 3
    edge = bs.summarize(runs, [3e-4, 6e-4], [0, 1, 2])
    assert edge["best_at_edge"]


def test_scoreboard_budget_runs_the_scoreboards_baseline_at_each_rate(monkeypatch):
    calls = []

    def fake_run_stage(stage, scale, seconds, data=None, seed=None, **overrides):
        calls.append((stage, scale, seconds, seed, overrides["lr"]))
        rise = 2.0 if overrides["lr"] > 8e-4 else 0.1
        return {"final_val_bpb": 2.2 + overrides["lr"] + 0.001 * seed, "steps": 500, "largest_loss_rise": rise}

    monkeypatch.setattr(bs, "run_stage", fake_run_stage)
    monkeypatch.setattr(bs, "toy_data", lambda vocab_size: None)
    out = bs.at_scoreboard_budget(360, [6e-4, 1e-3], [0, 1])
    assert calls == [("gpt2", "toy", 360, 0, 6e-4), ("gpt2", "toy", 360, 0, 1e-3),
                     ("gpt2", "toy", 360, 1, 6e-4), ("gpt2", "toy", 360, 1, 1e-3)]
    assert out["summary"]["0.001"]["spiked_seeds"] == 2 and out["summary"]["0.0006"]["spiked_seeds"] == 0
    assert out["summary"]["0.0006"]["final_bpb"]["mean"] == pytest.approx(2.2006 + 0.0005)
    assert math.isclose(out["seconds"], 360) and out["seeds"] == [0, 1]
