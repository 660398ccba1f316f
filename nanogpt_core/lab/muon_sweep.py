"""Chapter 05's benchmark: Muon against the tuned AdamW of the stage before it, at toy scale.

    python -m nanogpt_core.lab.muon_sweep --steps 60 --warmup 6 --seeds 1337 1338 1339 \\
        --json book/results/muon_toy.json

Three arms, each at toy scale, eager (``compile=False``: compilation changes speed, not the
math) with the previous stage's bf16 autocast, on the same data, seeds, step count and warmup:

  adamw       the stage before `muon` (`compile`): AdamW on every parameter, cosine schedule,
              gradient clipping at 1.0. Swept knob: its one learning rate ``lr``.
  muon-only   the same stage with only ``optimizer="muon"``: Muon for the block matrices, AdamW
              (nanochat's per-role rates) for the rest; schedule, warmup and clipping as `adamw`.
              It isolates the optimizer. Swept knob: Muon's ``matrix_lr``.
  muon-stage  the `muon` stage as configured (optimizer, warmdown schedule to 0, no clipping),
              except its warmup, which is set equal to the other arms'. Swept knob: ``matrix_lr``.

Protocol. Every arm gets the same linear warmup (``--warmup`` steps; the `muon` stage would use
none, the toy preset gives AdamW 20). Each arm's knob is swept on a factor-2 grid around its
default with the first seed; while the best value sits at an edge of the grid, the grid is
extended past that edge (at most ``--max-extend`` times per side), so the optimum is bracketed.
At each arm's best value the remaining seeds are run (a seed sets the initialization and the
data order). The result holds every run's val curve, per-arm final bpb over seeds (mean, std,
min, max), the paired seed-by-seed differences between arms with their noise verdict
(``lab.results.paired_difference``), the step at which each Muon arm first reaches the AdamW
arm's final bpb, and the seconds per step of each arm on this machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..config import STAGES, stage_config
from .results import describe_difference, paired_difference, save_result, spread

DEFAULT_SEEDS = (1337, 1338, 1339)
ARMS = ("adamw", "muon-only", "muon-stage")


def previous_stage(stage: str = "muon") -> str:
    ladder = list(STAGES)
    return ladder[ladder.index(stage) - 1]


def arm_spec(arm: str) -> tuple[str, dict, str, float]:
    """(stage, fixed overrides, swept knob, its default) of one arm."""
    prev = previous_stage("muon")
    if arm == "adamw":
        return prev, {}, "lr", stage_config(prev, "toy").train.lr
    if arm == "muon-only":
        return prev, dict(optimizer="muon"), "matrix_lr", stage_config(prev, "toy").train.matrix_lr
    if arm == "muon-stage":
        return "muon", {}, "matrix_lr", stage_config("muon", "toy").train.matrix_lr
    raise ValueError(f"arm={arm!r} is not known; choose one of {ARMS}")


def stage_differences(stage: str = "muon") -> list[dict]:
    """Every config field that differs between ``stage`` and the stage before it, at toy scale."""
    prev = previous_stage(stage)
    a, b = stage_config(prev, "toy").to_dict(), stage_config(stage, "toy").to_dict()
    return [dict(field=k, before=a[part][k], after=b[part][k]) for part in ("model", "train")
            for k in a[part] if a[part][k] != b[part][k]]


def steps_to_reach(val: list[dict], target_bpb: float) -> int | None:
    """The first evaluated step whose val bpb is at or below ``target_bpb`` (None if never)."""
    return next((v["step"] for v in val if v["bpb"] <= target_bpb), None)


def run(stage: str, steps: int, eval_every: int, eval_tokens: int, progress: bool = False, **overrides) -> dict:
    """One toy run of ``stage`` (eager) with ``overrides``; its curves, final bpb and speed."""
    from ..train import train

    cfg = stage_config(stage, "toy", steps=steps, eval_every=eval_every, eval_tokens=eval_tokens, compile=False,
                       **overrides)
    _, r = train(cfg, progress=progress)
    return dict(stage=stage, overrides=overrides, final_val_bpb=r.final_val_bpb, val=r.val, losses=r.losses,
                wall_seconds=r.wall_seconds, seconds_per_step=r.wall_seconds / max(1, r.steps - 1),
                tokens_per_second=r.tokens_per_second, hardware=r.hardware, torch_version=r.torch_version)


def grid_around(default: float, points: int = 3) -> list[float]:
    """``points`` values spaced by factors of 2, centred on ``default``."""
    lo = -(points // 2)
    return [default * 2.0**k for k in range(lo, lo + points)]


def tune(arm: str, steps: int, warmup: int, seed: int, eval_every: int, eval_tokens: int, max_extend: int = 2,
         progress: bool = False, log=print, on_run=None) -> dict:
    """Sweep one arm's knob with ``seed`` until the best value is inside the grid (or the cap is hit)."""
    stage, fixed, knob, default = arm_spec(arm)
    runs: dict[float, dict] = {}

    def at(value: float) -> dict:
        if value not in runs:
            r = run(stage, steps, eval_every, eval_tokens, progress, **fixed, warmup_steps=warmup, seed=seed,
                    **{knob: value})
            r["arm"], r["knob"], r["value"], r["seed"] = arm, knob, value, seed
            runs[value] = r
            log(f"{arm:>10} {knob}={value:g} seed {seed}: final val {r['final_val_bpb']:.4f} bpb "
                f"({r['seconds_per_step']:.2f} s/step)")
            if on_run:
                on_run(r)
        return runs[value]

    for value in grid_around(default):
        at(value)
    extended = {"low": 0, "high": 0}
    while True:
        grid = sorted(runs)
        best = min(grid, key=lambda v: runs[v]["final_val_bpb"])
        if best == grid[0] and extended["low"] < max_extend:
            extended["low"] += 1
            at(grid[0] / 2)
        elif best == grid[-1] and extended["high"] < max_extend:
            extended["high"] += 1
            at(grid[-1] * 2)
        else:
            break
    grid = sorted(runs)
    best = min(grid, key=lambda v: runs[v]["final_val_bpb"])
    return dict(arm=arm, stage=stage, fixed=fixed, knob=knob, default=default, grid=grid, best=best,
                bracketed=grid[0] < best < grid[-1], runs=[runs[v] for v in grid])


def summarize(arms: dict[str, dict], seeds: list[int]) -> dict:
    """Per-arm spread over seeds at the best value, paired differences, steps to reach AdamW's bpb."""
    finals = {a: [r["final_val_bpb"] for r in arms[a]["seed_runs"]] for a in arms}
    out = {"final_bpb": {a: spread(v) for a, v in finals.items()},
           "seconds_per_step": {a: spread([r["seconds_per_step"] for r in arms[a]["seed_runs"]]) for a in arms}}
    pairs = [("adamw", "muon-only"), ("adamw", "muon-stage"), ("muon-only", "muon-stage")]
    out["paired"] = {f"{b} - {a}": paired_difference(finals[a], finals[b]) for a, b in pairs if a in arms and b in arms}
    if "adamw" in arms:
        reach = {}
        for a in arms:
            if a == "adamw":
                continue
            steps = [steps_to_reach(r["val"], t) for r, t in zip(arms[a]["seed_runs"], finals["adamw"])]
            reach[a] = dict(steps=steps, seeds=seeds, target="the same seed's adamw final bpb")
        out["steps_to_reach_adamw_final"] = reach
    return out


def sweep(steps: int = 60, warmup: int = 6, seeds=DEFAULT_SEEDS, eval_every: int = 10, eval_tokens: int = 16_384,
          arms=ARMS, max_extend: int = 2, progress: bool = False, json_path: str | None = None, log=print) -> dict:
    """Tune every arm with the first seed, then run the other seeds at each arm's best value."""
    seeds = list(seeds)
    t0 = time.perf_counter()
    done: list[dict] = []

    def checkpoint(r: dict) -> None:  # after every run, so a long sweep can be read while it goes on
        done.append(r)
        if json_path:
            Path(json_path).write_text(json.dumps(dict(partial=True, runs=done), indent=1))

    tuned = {a: tune(a, steps, warmup, seeds[0], eval_every, eval_tokens, max_extend, progress, log, checkpoint)
             for a in arms}
    for a, t in tuned.items():
        first = next(r for r in t["runs"] if r["value"] == t["best"])
        t["seed_runs"] = [first]
        for seed in seeds[1:]:
            r = run(t["stage"], steps, eval_every, eval_tokens, progress, **t["fixed"], warmup_steps=warmup,
                    seed=seed, **{t["knob"]: t["best"]})
            r["arm"], r["knob"], r["value"], r["seed"] = a, t["knob"], t["best"], seed
            log(f"{a:>10} {t['knob']}={t['best']:g} seed {seed}: final val {r['final_val_bpb']:.4f} bpb")
            checkpoint(r)
            t["seed_runs"].append(r)
    summary = summarize(tuned, seeds)
    return dict(
        steps=steps, warmup_steps=warmup, eval_every=eval_every, eval_tokens=eval_tokens,
        previous_stage=previous_stage("muon"), stage_differences=stage_differences("muon"),
        arms={a: {k: v for k, v in t.items()} for a, t in tuned.items()}, summary=summary,
        hardware=done[0]["hardware"], total_seconds=time.perf_counter() - t0,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nanogpt_core.lab.muon_sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=6, help="linear warmup steps, the same for every arm")
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--eval-tokens", type=int, default=16_384)
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--max-extend", type=int, default=2, help="grid extensions per side when the best is at an edge")
    p.add_argument("--json", default="book/results/muon_toy.json")
    args = p.parse_args(argv)
    command = (f"python -m nanogpt_core.lab.muon_sweep --steps {args.steps} --warmup {args.warmup} "
               f"--seeds {' '.join(map(str, args.seeds))} --eval-every {args.eval_every} --eval-tokens {args.eval_tokens}"
               + ("" if list(args.arms) == list(ARMS) else f" --arms {' '.join(args.arms)}"))
    result = sweep(args.steps, args.warmup, args.seeds, args.eval_every, args.eval_tokens, tuple(args.arms),
                   args.max_extend, progress=False, json_path=args.json)
    result = save_result(result, args.json, command, seeds=args.seeds)
    for a, t in result["arms"].items():
        finals = result["summary"]["final_bpb"][a]
        print(f"{a:>10}: grid {t['knob']} {[f'{v:g}' for v in t['grid']]}, best {t['best']:g} "
              f"({'inside' if t['bracketed'] else 'AT AN EDGE of'} the grid); final val {finals['mean']:.4f} "
              f"± {finals['std']:.4f} bpb over {finals['n']} seeds")
    for name, d in result["summary"]["paired"].items():
        print(describe_difference(name, d))
    print(f"total {result['total_seconds']:.0f} s on {result['hardware']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
