"""Ablations: switch one change on at a time, train a few seeds each, compare val bits per byte.

The effects of single architecture changes are small at toy scale, often smaller than the
spread between seeds, so every variant is trained with the same seeds and reported as a mean
and its spread. Two comparisons per variant, both against the same baseline:

    equal steps      the val bpb after the same number of optimizer steps (the same tokens)
    equal wall time  the val bpb at the same training seconds t*, linearly interpolated on each
                     run's val curve; t* = the shortest run's training time, so every run has
                     a measurement at or after it

Command line (writes JSON with the hardware and date):

    python -m nanogpt_core.lab.ablation --steps 60 --seeds 0 1 --out book/results/ablation_architecture.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


from ..config import stage_config
from .results import save_result

# Each variant: the switches it turns on, on top of the baseline (the stage before `modern-block`).
MODERN_BLOCK = dict(
    pos_emb="rope", norm="rmsnorm", mlp="relu2", bias=False, tie_embeddings=False,
    qk_norm=True, logit_softcap=15.0, zero_init_proj=True,
)
ARCHITECTURE_VARIANTS: dict[str, dict] = {  # the two stages first: a partial run still compares them
    "baseline": {},
    "modern-block": MODERN_BLOCK,
    "value-embeddings": {**MODERN_BLOCK, "resid_scalars": True, "value_embeds": True},
    "rope": dict(pos_emb="rope"),
    "rmsnorm": dict(norm="rmsnorm"),
    "relu2": dict(mlp="relu2"),
    "no-bias": dict(bias=False),
    "untied": dict(tie_embeddings=False),
    "qk-norm": dict(qk_norm=True),
    "softcap": dict(logit_softcap=15.0),
    "zero-init": dict(zero_init_proj=True),
    "modern+resid-scalars": {**MODERN_BLOCK, "resid_scalars": True},
    "modern+value-embeds": {**MODERN_BLOCK, "value_embeds": True},
}


BASELINE_STAGE = "muon"  # the architecture switches are measured on top of the muon stage


def run_variant(name: str, seed: int, base: str, data=None, **overrides) -> dict:
    """Train one variant with one seed; return its val curve and timings (no model)."""
    from ..train import train

    cfg = stage_config(base, "toy", **{**ARCHITECTURE_VARIANTS[name], **overrides, "seed": seed})
    _, r = train(cfg, data, progress=False)
    return {
        "variant": name, "seed": seed, "steps": r.steps, "wall_seconds": r.wall_seconds,
        "tokens_per_second": r.tokens_per_second, "final_val_bpb": r.final_val_bpb,
        "val": [{"step": v["step"], "seconds": v["seconds"], "bpb": v["bpb"]} for v in r.val],
        "params": r.params,
    }


def bpb_at_time(run: dict, seconds: float) -> float:
    """Val bpb at ``seconds`` of training, linearly interpolated between val measurements."""
    pts = [(v["seconds"], v["bpb"]) for v in run["val"]]
    for (t0, b0), (t1, b1) in zip(pts, pts[1:]):
        if t0 <= seconds <= t1:
            return b0 if t1 == t0 else b0 + (b1 - b0) * (seconds - t0) / (t1 - t0)
    raise ValueError(f"{seconds:.1f} s is outside the run's val curve ({pts[0][0]:.1f}..{pts[-1][0]:.1f} s)")


def summarize(runs: list[dict]) -> dict[str, dict]:
    """Per variant: mean and spread (min..max, std) of val bpb at equal steps and equal time.

    ``delta_*`` are the mean differences to the baseline over the same seeds (paired), so the
    seed-to-seed variation that both runs share cancels.
    """
    t_star = min(r["wall_seconds"] for r in runs)
    by_variant: dict[str, list[dict]] = {}
    for r in runs:
        by_variant.setdefault(r["variant"], []).append(r)
    base = {r["seed"]: r for r in by_variant.get("baseline", [])}
    out = {}
    for name, rs in by_variant.items():
        steps = [r["final_val_bpb"] for r in rs]
        timed = [bpb_at_time(r, t_star) for r in rs]
        row = {
            "seeds": [r["seed"] for r in rs],
            "bpb_equal_steps": statistics.mean(steps), "min_equal_steps": min(steps), "max_equal_steps": max(steps),
            "std_equal_steps": statistics.stdev(steps) if len(steps) > 1 else 0.0,
            "bpb_equal_time": statistics.mean(timed), "min_equal_time": min(timed), "max_equal_time": max(timed),
            "seconds_equal_time": t_star,
            "tokens_per_second": statistics.mean(r["tokens_per_second"] for r in rs),
        }
        paired = [r for r in rs if r["seed"] in base]
        if paired:
            row["delta_equal_steps"] = statistics.mean(r["final_val_bpb"] - base[r["seed"]]["final_val_bpb"] for r in paired)
            row["delta_equal_time"] = statistics.mean(
                bpb_at_time(r, t_star) - bpb_at_time(base[r["seed"]], t_star) for r in paired
            )
        out[name] = row
    return out


def run_ablation(
    variants=tuple(ARCHITECTURE_VARIANTS), seeds=(0, 1), steps: int = 60, out: str | Path | None = None, **overrides
) -> dict:
    """Train every variant with every seed at toy scale; write and return the JSON-able results.

    ``overrides`` change the toy config of every run (e.g. ``eval_every``, ``batch_size``).
    With ``out`` the file is rewritten after every run, so an interrupted ablation keeps its runs;
    a later call with the same settings resumes it and skips the (variant, seed) runs it has.
    """
    from ..data import toy_data

    unknown = set(variants) - set(ARCHITECTURE_VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; choose from {list(ARCHITECTURE_VARIANTS)}")
    base = BASELINE_STAGE
    # compile off: it does not change the math, and compiling each run costs more than a toy run
    overrides = {"steps": steps, "eval_every": max(1, steps // 6), "compile": False, **overrides}
    cfg = stage_config(base, "toy", **overrides)
    data = toy_data(cfg.model.vocab_size)
    result = {
        "baseline_stage": base, "overrides": overrides, "variants": {v: ARCHITECTURE_VARIANTS[v] for v in variants},
        "runs": [],
    }
    if out and Path(out).exists():  # resume: keep the runs of an earlier call with the same settings
        earlier = json.loads(Path(out).read_text())
        if earlier.get("overrides") == overrides and earlier.get("baseline_stage") == base:
            result["runs"] = earlier["runs"]
            result["variants"] = {**earlier["variants"], **result["variants"]}
    done = {(r["variant"], r["seed"]) for r in result["runs"]}
    for seed in seeds:  # seed-major, so a partial file already compares every variant
        for name in variants:
            if (name, seed) in done:
                continue
            result["runs"].append(run_variant(name, seed, base, data, **overrides))
            result["summary"] = summarize(result["runs"])
            print(f"{name} seed {seed}: val bpb {result['runs'][-1]['final_val_bpb']:.4f}", flush=True)
            result = save_result(result, out, "python -m nanogpt_core.lab.ablation", seeds, cfg.train.device)
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variants", nargs="+", default=list(ARCHITECTURE_VARIANTS), choices=list(ARCHITECTURE_VARIANTS))
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--eval-tokens", type=int, default=16_384)
    ap.add_argument("--out", default="book/results/ablation_architecture.json")
    args = ap.parse_args(argv)
    extra = {"eval_tokens": args.eval_tokens}
    if args.batch_size:
        extra["batch_size"] = args.batch_size
    result = run_ablation(args.variants, args.seeds, args.steps, args.out, **extra)
    for name, row in result["summary"].items():
        print(f"{name:22s} equal steps {row['bpb_equal_steps']:.4f} ({row['min_equal_steps']:.4f}..{row['max_equal_steps']:.4f})"
              f"  equal time {row['bpb_equal_time']:.4f}  {row['tokens_per_second']:,.0f} tok/s")


if __name__ == "__main__":
    main()
