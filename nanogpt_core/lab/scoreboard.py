"""The course's own speedrun: every stage of the ladder on the machine at hand, against the gpt2 baseline.

Protocol (the fair one for a speedrun): every stage gets the same training wall-time budget
S seconds. A short calibration run measures the stage's seconds per step, and the real
run is given ``steps = S / step_seconds`` so that its LR schedule spans the budget. Then:

    target        the baseline's (stage gpt2) final val bpb
    time to target  the first training time t at which the stage's val bpb <= target,
                  linearly interpolated between evaluations, plus its compile/warm-up time
    speedup       (baseline's training time + compile time) / the stage's time to target

Evaluation time is excluded from every clock; compilation is included. A stage that never
reaches the target in its budget has no speedup (None).

    python -m nanogpt_core speedrun --scale toy --seconds 300 --out book/results/speedrun_scoreboard
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import STAGES, stage_config
from .results import save_result


def crossing(val: list[dict], target: float, key: str) -> float | None:
    """The first ``key`` (seconds or step) at which the val curve reaches ``target``, interpolated."""
    for prev, cur in zip(val, val[1:]):
        if cur["bpb"] <= target:
            if prev["bpb"] <= target:
                return prev[key]
            frac = (prev["bpb"] - target) / (prev["bpb"] - cur["bpb"])
            return prev[key] + frac * (cur[key] - prev[key])
    return val[0][key] if val and val[0]["bpb"] <= target else None


def run_stage(stage: str, scale: str, seconds: float, data=None, calibration_steps: int = 4, **overrides) -> dict:
    """Train ``stage`` for about ``seconds`` of training time; returns its RunResult as a dict."""
    from ..train import train

    probe = stage_config(stage, scale, **{**overrides, "steps": calibration_steps, "eval_every": 0,
                                          "eval_tokens": min(4096, overrides.get("eval_tokens", 4096))})
    _, calib = train(probe, data, progress=False)
    step_seconds = calib.wall_seconds / max(1, calib.steps - 1)  # the first step (compile) is timed apart
    steps = max(calibration_steps, int(seconds / step_seconds))
    warmup = stage_config(stage, scale).train.warmup_steps
    cfg = stage_config(stage, scale, **{**overrides, "steps": steps, "eval_every": max(1, steps // 10),
                                        "warmup_steps": min(warmup, steps // 10)})
    _, result = train(cfg, data, progress=False)
    out = {k: getattr(result, k) for k in ("stage", "steps", "tokens", "wall_seconds", "tokens_per_second",
                                          "final_val_bpb", "val", "hardware", "torch_version")}
    out["compile_seconds"] = getattr(result, "compile_seconds", 0.0)
    return out


def scoreboard(runs: list[dict]) -> list[dict]:
    """The table: each stage against the first run (the baseline)."""
    base = runs[0]
    target = base["final_val_bpb"]
    base_time = base["wall_seconds"] + base["compile_seconds"]
    rows = []
    for run in runs:
        t = crossing(run["val"], target, "seconds")
        s = crossing(run["val"], target, "step")
        to_target = None if t is None else t + run["compile_seconds"]
        rows.append(dict(
            stage=run["stage"], tokens_per_second=run["tokens_per_second"], steps=run["steps"],
            final_val_bpb=run["final_val_bpb"], seconds_to_target=to_target, steps_to_target=s,
            compile_seconds=run["compile_seconds"],
            speedup=None if to_target is None else base_time / max(to_target, 1e-9),
        ))
    return rows


def format_table(rows: list[dict], target: float) -> str:
    lines = [f"target: the gpt2 baseline's final val bpb = {target:.4f}",
             f"{'stage':<18}{'tok/s':>9}{'steps':>7}{'final bpb':>11}{'steps->tgt':>12}{'s->tgt':>9}{'speedup':>9}"]
    for r in rows:
        def f(v, fmt):
            return "-" if v is None else format(v, fmt)
        lines.append(f"{r['stage']:<18}{r['tokens_per_second']:>9,.0f}{r['steps']:>7}{r['final_val_bpb']:>11.4f}"
                     f"{f(r['steps_to_target'], '.0f'):>12}{f(r['seconds_to_target'], '.1f'):>9}"
                     f"{f(r['speedup'], '.2f'):>9}")
    return "\n".join(lines)


def plot(runs: list[dict], rows: list[dict], path: str | Path | None = None):
    """Val bpb against training seconds for every stage, and the speedups; saved to ``path`` if given."""
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), dpi=90)
    target = runs[0]["final_val_bpb"]
    for run in runs:
        ax.plot([v["seconds"] + run["compile_seconds"] for v in run["val"]], [v["bpb"] for v in run["val"]],
                marker=".", label=run["stage"])
    ax.axhline(target, color="k", ls="--", lw=1, label="gpt2's final bpb")
    ax.set(xlabel="training seconds (incl. compile, excl. eval)", ylabel="val bits per byte", title="the ladder, equal time")
    ax.legend(fontsize=7)
    speed = [r["speedup"] or 0.0 for r in rows]
    bx.barh([r["stage"] for r in rows], speed, color="tab:green")
    bx.axvline(1.0, color="k", lw=1)
    bx.invert_yaxis()
    bx.set(xlabel="speedup to the baseline's final bpb (x)", title="time to gpt2's final val bpb")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


def run_scoreboard(scale: str = "toy", seconds: float = 300.0, stages: list[str] | None = None, data=None,
                   **overrides) -> dict:
    """Run the ladder (every stage, or ``stages``; gpt2 first, as the baseline) and score it."""
    stages = stages or list(STAGES)
    if stages[0] != "gpt2":
        stages = ["gpt2", *[s for s in stages if s != "gpt2"]]
    runs = []
    for stage in stages:
        print(f"[speedrun] {stage}: {seconds:g} s of training ...", flush=True)
        runs.append(run_stage(stage, scale, seconds, data, **overrides))
    rows = scoreboard(runs)
    return dict(
        protocol="equal training wall-time budget per stage; speedup = baseline time / time to the baseline's "
                 "final val bpb (compile included, evaluation excluded)",
        scale=scale, seconds_per_stage=seconds, hardware=runs[0]["hardware"], target_bpb=runs[0]["final_val_bpb"], rows=rows, runs=runs,
    )


def main_cli(args: argparse.Namespace) -> int:
    board = run_scoreboard(args.scale, args.seconds, args.stages)
    print(format_table(board["rows"], board["target_bpb"]))
    print(f"hardware: {board['hardware']}; {board['seconds_per_stage']:g} s per stage")
    out = Path(args.out)
    board = save_result(board, out.with_suffix(".json"), f"python -m nanogpt_core speedrun --scale {args.scale} --seconds {args.seconds:g}")
    plot(board["runs"], board["rows"], out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


def show_committed(path: str | Path) -> dict:
    """Print and plot a saved scoreboard (e.g. the book's ``book/results/speedrun_scoreboard.json``)
    with where and how it was measured."""
    board = json.loads(Path(path).read_text())
    print(f"measured by `python -m nanogpt_core speedrun --scale {board['scale']} --seconds {board['seconds_per_stage']:g}` "
          f"on {board['hardware']}, {board['date']}, torch {board['torch_version']}")
    print(format_table(board["rows"], board["target_bpb"]))
    plot(board["runs"], board["rows"])
    return board
