"""The course's own speedrun: every stage of the ladder on the machine at hand, against the gpt2 baseline.

Protocol (the fair one for a speedrun): every stage gets the same training wall-time budget
S seconds. A short calibration run measures the stage's seconds per step (the median of its
steps after the first), and the real
run is given ``steps = S / step_seconds`` so that its LR schedule spans the budget. Then:

    target        the baseline's (stage gpt2) final val bpb, with the same seed
    time to target  the first training time t at which the stage's val bpb <= target,
                  linearly interpolated between evaluations, plus its compile/warm-up time
    speedup       (baseline's training time + compile time) / the stage's time to target

Evaluation time is excluded from every clock; compilation is included, cold: the calibration run
compiles in a fresh, empty compile cache, as a reader's first run does, and its first step is the
compile time counted. A stage that never reaches the target in its budget has no speedup (None).
A stage stops at the target (the finish line of a speedrun; its schedule still spans the whole
budget); ``stop_at_target=False`` runs every stage to the end of its budget instead.

Every stage is run with each seed (interleaved by seed); the table gives mean ± std over seeds and
speedups to 2 significant figures, since one run's 4th digit is noise.

A speedup is a property of its target: ``scoreboard(runs, baseline_seconds=60)`` reads the same
runs against an easier one, the baseline's val bpb after its first minute of training.

    python -m nanogpt_core speedrun --scale toy --seconds 360 --seeds 0 1 2 --out book/results/speedrun_scoreboard
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from pathlib import Path

from ..config import STAGES, stage_config
from .results import save_result, significant, significant_pm, spread


def crossing(val: list[dict], target: float, key: str) -> float | None:
    """The first ``key`` (seconds or step) at which the val curve reaches ``target``, interpolated."""
    for prev, cur in zip(val, val[1:]):
        if cur["bpb"] <= target:
            if prev["bpb"] <= target:
                return prev[key]
            frac = (prev["bpb"] - target) / (prev["bpb"] - cur["bpb"])
            return prev[key] + frac * (cur[key] - prev[key])
    return val[0][key] if val and val[0]["bpb"] <= target else None


def early_steps(steps: int) -> tuple[int, ...]:
    """Evaluation steps on a log scale (1, 2, 3, 4, 6, 8, 11, 16, ...) below ``steps``: a stage that
    reaches the target within a few steps is then timed between two evaluations, not from step 0."""
    out, x = [], 1.0
    while round(x) < steps:
        out.append(round(x))
        x *= 1.4
    return tuple(sorted(set(out)))


@contextlib.contextmanager
def fresh_compile_caches():
    """Compile as on a fresh machine: no graphs compiled earlier in this process, an empty Inductor
    cache directory, and Inductor's in-memory caches cleared (its compiled kernels are memoized by
    their source: without this, a stage whose kernels an earlier stage already built, such as
    `muon` after `compile`, would compile in a fraction of its cold time)."""
    import torch._dynamo

    try:
        from torch._inductor.utils import fresh_cache
    except ImportError:  # torch before 2.9 names it fresh_inductor_cache
        from torch._inductor.utils import fresh_inductor_cache as fresh_cache
    torch._dynamo.reset()
    try:
        with fresh_cache():
            yield
    finally:
        torch._dynamo.reset()


def largest_rise(losses: list[float], after: int) -> float:
    """The largest one-step rise of the train loss after step ``after`` (a spike shows here)."""
    tail = losses[max(after - 1, 0):]
    return max((b - a for a, b in zip(tail, tail[1:])), default=0.0)


def run_stage(stage: str, scale: str, seconds: float, data=None, calibration_steps: int = 6, seed: int | None = None,
              evals: int = 12, target: float | None = None, **overrides) -> dict:
    """Train ``stage`` for about ``seconds`` of training time; returns its RunResult as a dict.

    Evaluations: ``evals`` evenly spaced, plus log-spaced early ones (``early_steps``). ``target``:
    stop at the first evaluation at or below this val bpb. ``compile_seconds`` is the cold first
    step of the calibration run (``fresh_compile_caches``)."""
    from ..train import train

    if seed is not None:
        overrides = {**overrides, "seed": seed}
    probe = stage_config(stage, scale, **{**overrides, "steps": calibration_steps, "eval_every": 0,
                                          "eval_tokens": min(4096, overrides.get("eval_tokens", 4096))})
    with fresh_compile_caches():
        _, calib = train(probe, data, progress=False)
        # the median step after the first (compile, timed apart): one slow step does not shorten the budget
        step_seconds = statistics.median(calib.step_seconds[1:]) if calib.steps > 1 else calib.compile_seconds
        steps = max(calibration_steps, int(seconds / step_seconds))
        warmup = stage_config(stage, scale).train.warmup_steps
        cfg = stage_config(stage, scale, **{**overrides, "steps": steps, "eval_every": max(1, steps // evals),
                                            "eval_steps": early_steps(steps), "warmup_steps": min(warmup, steps // 10)})
        _, result = train(cfg, data, progress=False, stop_at_bpb=target)
    out = {k: getattr(result, k) for k in ("stage", "steps", "tokens", "wall_seconds", "tokens_per_second",
                                          "final_val_bpb", "val", "hardware", "torch_version")}
    out["planned_steps"] = steps  # more than ``steps`` when the run stopped at the target
    out["compile_seconds"] = calib.compile_seconds
    out["warm_compile_seconds"] = result.compile_seconds
    out["largest_loss_rise"] = largest_rise(result.losses, cfg.train.warmup_steps)
    out["seed"] = cfg.train.seed
    return out


def bpb_at(val: list[dict], seconds: float) -> float:
    """The val bpb of a curve after ``seconds`` of training, interpolated between its evaluations."""
    for prev, cur in zip(val, val[1:]):
        if cur["seconds"] >= seconds:
            frac = (seconds - prev["seconds"]) / max(cur["seconds"] - prev["seconds"], 1e-9)
            return prev["bpb"] + min(max(frac, 0.0), 1.0) * (cur["bpb"] - prev["bpb"])
    raise ValueError(f"the curve ends at {val[-1]['seconds']:.0f} s of training, before {seconds:g} s")


def scoreboard(runs: list[dict], baseline_seconds: float | None = None) -> list[dict]:
    """The table of one seed: each stage against the first run (the baseline). The target is the
    baseline's final val bpb, or with ``baseline_seconds`` its val bpb after that much training."""
    base = runs[0]
    if baseline_seconds is None:
        target, base_time = base["final_val_bpb"], base["wall_seconds"] + base["compile_seconds"]
    else:
        target, base_time = bpb_at(base["val"], baseline_seconds), baseline_seconds + base["compile_seconds"]
    rows = []
    for run in runs:
        t = crossing(run["val"], target, "seconds")
        s = crossing(run["val"], target, "step")
        to_target = None if t is None else t + run["compile_seconds"]
        rows.append(dict(
            stage=run["stage"], seed=run.get("seed"), tokens_per_second=run["tokens_per_second"], steps=run["steps"],
            planned_steps=run.get("planned_steps", run["steps"]), final_val_bpb=run["final_val_bpb"],
            seconds_to_target=to_target, steps_to_target=s, compile_seconds=run["compile_seconds"],
            largest_loss_rise=run.get("largest_loss_rise"),
            speedup=None if to_target is None else base_time / max(to_target, 1e-9),
        ))
    return rows


def summarize(rows_by_seed: list[list[dict]]) -> list[dict]:
    """Per stage over seeds, as mean and spread: tok/s; time to target and speedup over the seeds that
    reached the target (``reached`` counts them); final bpb over the seeds that ran their whole budget
    (a stage that stopped at the target has none)."""
    out = []
    for i, first in enumerate(rows_by_seed[0]):
        rows = [seed_rows[i] for seed_rows in rows_by_seed]
        reached = [r for r in rows if r["speedup"] is not None]
        finals = [r["final_val_bpb"] for r in rows if r["final_val_bpb"] is not None]
        out.append(dict(stage=first["stage"], seeds=len(rows), reached=len(reached),
                        tokens_per_second=spread([r["tokens_per_second"] for r in rows]),
                        final_val_bpb=spread(finals) if finals else None,
                        compile_seconds=spread([r["compile_seconds"] for r in rows]),
                        seconds_to_target=spread([r["seconds_to_target"] for r in reached]) if reached else None,
                        speedup=spread([r["speedup"] for r in reached]) if reached else None))
    return out


def format_table(summary: list[dict], targets: list[float]) -> str:
    """Mean ± std over seeds, to 2 significant figures (bpb to 3 decimals); "s to target" includes the
    compile seconds."""
    lines = [f"target per seed: that seed's gpt2 final val bpb ({', '.join(f'{t:.3f}' for t in targets)})",
             f"{'stage':<18}{'tok/s':>13}{'compile s':>12}{'reached':>9}{'s to target':>14}{'speedup':>13}   "
             "final val bpb"]
    for r in summary:
        tok, bpb = r["tokens_per_second"], r["final_val_bpb"]
        final = ("stopped at target" if bpb is None else f"{bpb['mean']:.3f} (1 seed)" if bpb["n"] == 1
                 else f"{bpb['mean']:.3f} ± {bpb['std']:.3f} (n={bpb['n']})")
        speedup = "1 (baseline)" if r is summary[0] else significant_pm(r["speedup"])
        lines.append(f"{r['stage']:<18}{significant(tok['mean']):>7} ± {significant(tok['std'], 1):<4}"
                     f"{significant_pm(r['compile_seconds']):>12}{r['reached']:>4}/{r['seeds']}"
                     f"{significant_pm(r['seconds_to_target']):>14}{speedup:>13}   {final}")
    return "\n".join(lines)


def plot(board: dict, path: str | Path | None = None):
    """Val bpb against training seconds for every stage (seed 0 bold, the others thin), and the
    speedups with their seed spread; saved to ``path`` if given."""
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), dpi=90)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    stages = [r["stage"] for r in board["summary"]]
    for k, runs in enumerate(board["runs_by_seed"]):
        for i, run in enumerate(runs):
            ax.plot([v["seconds"] + run["compile_seconds"] for v in run["val"]], [v["bpb"] for v in run["val"]],
                    color=colors[i % len(colors)], lw=1.5 if k == 0 else 0.6, alpha=1.0 if k == 0 else 0.6,
                    marker="." if k == 0 else None, label=run["stage"] if k == 0 else None)
    for t in board["targets"]:
        ax.axhline(t, color="k", ls="--", lw=0.7)
    ax.set_xscale("log")
    ax.set(xlabel="training seconds, log scale (incl. compile, excl. eval)", ylabel="val bits per byte",
           title="each stage until the target or its budget (dashed: the targets)")
    ax.legend(fontsize=7)
    means = [r["speedup"]["mean"] if r["speedup"] else 0.0 for r in board["summary"]]
    stds = [r["speedup"]["std"] if r["speedup"] else 0.0 for r in board["summary"]]
    bx.barh(stages, means, xerr=stds, color="tab:green", capsize=3)
    for k, rows in enumerate(board["rows_by_seed"]):
        bx.plot([r["speedup"] or 0.0 for r in rows], stages, "k.", ms=4, label="one seed" if k == 0 else None)
    bx.axvline(1.0, color="k", lw=1)
    bx.invert_yaxis()
    bx.legend(fontsize=7)
    bx.set(xlabel="speedup to the baseline's final bpb (x; bar: mean ± std)", title="time to gpt2's final val bpb")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


def run_scoreboard(scale: str = "toy", seconds: float = 300.0, stages: list[str] | None = None, data=None,
                   seeds=(0,), cache: str | Path | None = None, stop_at_target: bool = True, **overrides) -> dict:
    """Run the ladder (every stage, or ``stages``; gpt2 first, as the baseline) for each seed and score it.

    Runs are interleaved by seed (every stage of seed 0, then of seed 1, ...), so a slow spell of the
    machine lands on every stage alike. ``cache``: a JSON-lines file of finished runs, reused when the
    same stage, seed, scale, budget and protocol come again (a long scoreboard can be run in pieces)."""
    stages = ["gpt2", *[s for s in dict.fromkeys(stages or STAGES) if s != "gpt2"]]
    done = {}
    if cache and Path(cache).exists():
        for line in Path(cache).read_text().splitlines():
            run = json.loads(line)
            done[(run["stage"], run["seed"], run["scale"], run["seconds_per_stage"], run.get("stop_at_target"))] = run
    runs_by_seed = []
    for seed in seeds:
        runs = []
        for stage in stages:
            key = (stage, seed, scale, seconds, stop_at_target)
            if key not in done:
                print(f"[speedrun] seed {seed}, {stage}: {seconds:g} s of training ...", flush=True)
                target = runs[0]["final_val_bpb"] if runs and stop_at_target else None
                done[key] = {**run_stage(stage, scale, seconds, data, seed=seed, target=target, **overrides),
                             "scale": scale, "seconds_per_stage": seconds, "stop_at_target": stop_at_target}
                if cache:
                    with open(cache, "a") as f:
                        f.write(json.dumps(done[key]) + "\n")
            runs.append(done[key])
        runs_by_seed.append(runs)
    rows_by_seed = [scoreboard(runs) for runs in runs_by_seed]
    return dict(
        protocol="equal training wall-time budget per stage; speedup = the seed's baseline time / time to that "
                 "baseline's final val bpb (cold compile included, evaluation excluded); mean ± std over seeds"
                 + ("; a stage stops at the target" if stop_at_target else "; every stage runs its whole budget"),
        scale=scale, seconds_per_stage=seconds, seeds=list(seeds), hardware=runs_by_seed[0][0]["hardware"],
        targets=[runs[0]["final_val_bpb"] for runs in runs_by_seed], summary=summarize(rows_by_seed),
        rows_by_seed=rows_by_seed, runs_by_seed=runs_by_seed,
    )


def command(args) -> str:
    return (f"python -m nanogpt_core speedrun --scale {args.scale} --seconds {args.seconds:g} "
            f"--seeds {' '.join(map(str, args.seeds))}" + (" --run-out" if args.run_out else ""))


def main_cli(args: argparse.Namespace) -> int:
    board = run_scoreboard(args.scale, args.seconds, args.stages, seeds=args.seeds, cache=args.cache,
                           stop_at_target=not args.run_out, eval_tokens=args.eval_tokens)
    print(format_table(board["summary"], board["targets"]))
    print(f"hardware: {board['hardware']}; {board['seconds_per_stage']:g} s per stage; seeds {board['seeds']}")
    out = Path(args.out)
    board = save_result(board, out.with_suffix(".json"), command(args), seeds=args.seeds)
    plot(board, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


def show_committed(path: str | Path) -> dict:
    """Print and plot a saved scoreboard (e.g. the book's ``book/results/speedrun_scoreboard.json``)
    with where and how it was measured."""
    board = json.loads(Path(path).read_text())
    board["summary"] = summarize(board["rows_by_seed"])  # today's columns, also for a file written before them
    print(f"measured by `{board['command']}` on {board['hardware']}, {board['date']}, torch {board['torch_version']}")
    if board.get("note"):
        print(f"note: {board['note']}")
    print(format_table(board["summary"], board["targets"]))
    plot(board)
    return board
