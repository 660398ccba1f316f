"""The toy-scale Muon benchmark behind chapter 05: `muon` vs the stage before it, plus a small LR sweep.

    python -m nanogpt_core.lab.muon_sweep --steps 200 --json book/results/muon_toy.json

Every run uses the same data, seed, model and step count; only the optimizer (and its
schedule) differ. The baseline's AdamW rate and Muon's matrix rate are each swept over a few
multiples, so the comparison is not won by tuning one side only. Both sides run eagerly
(compile only changes speed, not the math) with the stage's bf16 autocast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import STAGES, stage_config
from .results import save_result


def previous_stage(stage: str = "muon") -> str:
    ladder = list(STAGES)
    return ladder[ladder.index(stage) - 1]


def steps_to_reach(val: list[dict], target_bpb: float) -> int | None:
    """The first evaluated step whose val bpb is at or below ``target_bpb`` (None if never)."""
    return next((v["step"] for v in val if v["bpb"] <= target_bpb), None)


def run(stage: str, steps: int, eval_every: int, eval_tokens: int, progress: bool = False, **overrides) -> dict:
    from ..train import train

    cfg = stage_config(stage, "toy", steps=steps, eval_every=eval_every, eval_tokens=eval_tokens, compile=False,
                       **overrides)
    _, r = train(cfg, progress=progress)
    return dict(stage=stage, overrides=overrides, final_val_bpb=r.final_val_bpb, val=r.val, losses=r.losses,
                wall_seconds=r.wall_seconds, tokens_per_second=r.tokens_per_second, hardware=r.hardware,
                torch_version=r.torch_version)


def sweep(steps: int = 200, eval_every: int = 20, eval_tokens: int = 16_384,
          adamw_lrs=(1e-3, 2e-3, 4e-3), matrix_lrs=(0.01, 0.02, 0.04), progress: bool = False, json_path: str | None = None) -> dict:
    """Run the previous stage at each AdamW ``lr`` and `muon` at each ``matrix_lr``."""
    prev = previous_stage("muon")
    plan = [(prev, dict(lr=lr)) for lr in adamw_lrs] + [("muon", dict(matrix_lr=lr)) for lr in matrix_lrs]
    plan.sort(key=lambda item: item[1] not in (dict(lr=1e-3), dict(matrix_lr=0.02)))  # the defaults first
    runs = []
    for stage, overrides in plan:
        runs.append(run(stage, steps, eval_every, eval_tokens, progress, **overrides))
        if json_path:  # after every run, so a long sweep can be read while it goes on
            Path(json_path).write_text(json.dumps(dict(partial=True, runs=runs), indent=1))
    best_prev = min((r for r in runs if r["stage"] == prev), key=lambda r: r["final_val_bpb"])
    default_muon = next(r for r in runs if r["stage"] == "muon" and r["overrides"]["matrix_lr"] == 0.02)
    reached = steps_to_reach(default_muon["val"], best_prev["final_val_bpb"])
    return dict(
        command=f"python -m nanogpt_core.lab.muon_sweep --steps {steps} --eval-every {eval_every} --eval-tokens {eval_tokens}",
        hardware=runs[0]["hardware"], steps=steps, previous_stage=prev, runs=runs, best_previous_final_bpb=best_prev["final_val_bpb"],
        muon_steps_to_reach_it=reached, muon_step_fraction=None if reached is None else reached / steps,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nanogpt_core.lab.muon_sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--eval-tokens", type=int, default=16_384)
    p.add_argument("--adamw-lrs", type=float, nargs="+", default=[1e-3, 2e-3, 4e-3])
    p.add_argument("--matrix-lrs", type=float, nargs="+", default=[0.01, 0.02, 0.04])
    p.add_argument("--json", default="book/results/muon_toy.json")
    args = p.parse_args(argv)
    result = sweep(args.steps, args.eval_every, args.eval_tokens, tuple(args.adamw_lrs), tuple(args.matrix_lrs),
                   progress=True, json_path=args.json)
    result = save_result(result, args.json, result["command"])
    for r in result["runs"]:
        print(f"{r['stage']:>8} {r['overrides']}: final val {r['final_val_bpb']:.4f} bpb, {r['wall_seconds']:.0f} s")
    print(f"muon reached {result['best_previous_final_bpb']:.4f} bpb at step {result['muon_steps_to_reach_it']} "
          f"of {result['steps']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
