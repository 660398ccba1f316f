"""Ablations of chapter 6: every switch of the speedrun's block, added alone and removed alone.

The question: which of the eight switches of the `modern-block` stage (RoPE, RMSNorm, ReLU^2,
no biases, untied head, QK-norm, logit softcap, zero-init projections) lowers the val bits per
byte, and by more than the spread between seeds? Two experiments per switch, both paired by seed
(same seed = same initial draw and the same batches):

    add-one         the baseline (the `muon` stage, as configured) plus this switch alone,
                    compared with the baseline
    leave-one-out   the full `modern-block` stage minus this switch (set back to the baseline's
                    value), compared with the full `modern-block`

Add-one asks "does the switch help a GPT-2 block?", leave-one-out "does the modern block still
need it once the other seven are on?"; a switch can matter in one and not the other. The stages
themselves are rows too: `modern-block` against the baseline, `value-embeddings` against
`modern-block`. Every run trains at the toy scale's batch (16 rows of 256 tokens) for the same
number of steps, with the same schedule (the muon stage's: no warmup, constant LR, linear
warmdown over the last 40% of the steps to 0), the same seed set, evaluating every
``eval_every`` steps on the same first ``eval_tokens`` val tokens.

Two readings per run:

    equal steps      the final val bpb (the same steps, the same tokens)
    equal wall time  the val bpb at t* training seconds, linearly interpolated on the run's val
                     curve; t* = the fastest variant's training time, so every run reaches it, and
                     ``evals_before_t_star`` records how many evaluations the slowest run has at
                     or before t*. Training seconds exclude evaluation and the first step.
                     The clock of a run is its variant's median seconds per step over the seeds
                     (``on_median_clock``): a config's speed does not depend on its seed, and one
                     run's own clock can be off (the first run of a process, before the kernels
                     and the allocator are warm, measured 35% slower than the same config later).
                     The measured clocks are kept in the JSON.
                     At t* the fastest runs have finished their warmdown and slower runs are still
                     in the constant-LR phase, so equal time is a reading conservative against
                     the slower variants.

A difference is the switch's effect: bpb with the switch minus bpb without it, per seed
(negative = the switch helps); ``results.paired_difference`` calls it noise when its seed
spread (min..max) contains zero.

Protocol: every run of the table in one sitting, on a quiet machine (run it alone: the course's
maintainers hold a lock that serialises heavy jobs), interleaved by seed (seed 0 of every
variant, then seed 1, ...), so a slow drift of the machine's speed hits every variant alike.
``torch.compile`` is off (compiling each of the 19 configurations would cost more than its run);
equal time is therefore eager speed, where the block's extra elementwise work (the fp32 softcap,
RoPE, QK-norm) costs more than in the compiled stage.

Command line (writes JSON with the hardware and date; resumes an interrupted run of the same
settings):

    python -m nanogpt_core.lab.ablation --steps 16 --seeds 0 1 2 --out book/results/ablation_architecture.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from ..config import stage_config
from .results import paired_difference, save_result, spread

BASELINE_STAGE = "muon"  # the architecture switches are measured on top of the muon stage

# The switches of the modern-block stage, by a short name (the names of the chapter's table).
SWITCHES: dict[str, dict] = {
    "rope": dict(pos_emb="rope"),
    "rmsnorm": dict(norm="rmsnorm"),
    "relu2": dict(mlp="relu2"),
    "no-bias": dict(bias=False),
    "untied": dict(tie_embeddings=False),
    "qk-norm": dict(qk_norm=True),
    "softcap": dict(logit_softcap=15.0),
    "zero-init": dict(zero_init_proj=True),
}
MODERN_BLOCK = {k: v for sw in SWITCHES.values() for k, v in sw.items()}
VALUE_EMBEDDINGS = dict(resid_scalars=True, value_embeds=True)


def baseline_values(switch: str) -> dict:
    """The baseline stage's value of each field of ``switch`` (what leave-one-out sets it back to)."""
    cfg = stage_config(BASELINE_STAGE, "toy")
    return {k: getattr(cfg.model, k) if hasattr(cfg.model, k) else getattr(cfg.train, k) for k in SWITCHES[switch]}


# Each variant: the switches it sets on top of the baseline stage. The stages and every switch alone (add-one);
# the two halves of `value-embeddings` are extra variants (not in the default table).
ARCHITECTURE_VARIANTS: dict[str, dict] = {
    "baseline": {},
    "modern-block": MODERN_BLOCK,
    "value-embeddings": {**MODERN_BLOCK, **VALUE_EMBEDDINGS},
    **{f"+{name}": dict(sw) for name, sw in SWITCHES.items()},
    "modern+resid-scalars": {**MODERN_BLOCK, "resid_scalars": True},
    "modern+value-embeds": {**MODERN_BLOCK, "value_embeds": True},
}
# The full block with one switch set back to the baseline's value (leave-one-out).
LEAVE_ONE_OUT_VARIANTS: dict[str, dict] = {f"-{name}": {**MODERN_BLOCK, **baseline_values(name)} for name in SWITCHES}
VARIANTS: dict[str, dict] = {**ARCHITECTURE_VARIANTS, **LEAVE_ONE_OUT_VARIANTS}
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if not v.startswith("modern+"))

# The comparisons of the table: (row name, kind, variant without the change, variant with it).
COMPARISONS: list[tuple[str, str, str, str]] = [
    ("modern-block", "stage", "baseline", "modern-block"),
    ("value-embeddings", "stage", "modern-block", "value-embeddings"),
    *[(name, "add-one", "baseline", f"+{name}") for name in SWITCHES],
    *[(name, "leave-one-out", f"-{name}", "modern-block") for name in SWITCHES],
    ("resid-scalars", "add-one", "modern-block", "modern+resid-scalars"),
    ("value-embeds", "add-one", "modern-block", "modern+value-embeds"),
]

DEFAULTS = dict(steps=16, seeds=(0, 1, 2), eval_every=2, eval_tokens=4096)


def run_variant(name: str, seed: int, base: str, data=None, **overrides) -> dict:
    """Train one variant with one seed; return its val curve and timings (no model)."""
    from ..train import train

    cfg = stage_config(base, "toy", **{**VARIANTS[name], **overrides, "seed": seed})
    _, r = train(cfg, data, progress=False)
    return {
        "variant": name, "seed": seed, "steps": r.steps, "wall_seconds": r.wall_seconds,
        "tokens_per_second": r.tokens_per_second, "final_val_bpb": r.final_val_bpb, "precision": r.precision,
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


def seconds_per_step(run: dict) -> float:
    """The run's measured training seconds per step (its first step, the warm-up, is timed apart)."""
    return run["wall_seconds"] / max(1, run["steps"] - 1)


def on_median_clock(runs: list[dict]) -> list[dict]:
    """Copies of ``runs`` whose clock is their variant's median seconds per step over its seeds.

    The val measurement at step s was taken after s - 1 timed steps (the first step is timed apart),
    so its time becomes (s - 1) x the median; ``wall_seconds`` likewise. Steps and bpb are unchanged.
    """
    by_variant: dict[str, list[float]] = {}
    for r in runs:
        by_variant.setdefault(r["variant"], []).append(seconds_per_step(r))
    out = []
    for r in runs:
        sps = statistics.median(by_variant[r["variant"]])
        out.append({**r, "wall_seconds": sps * max(0, r["steps"] - 1), "tokens_per_second_measured": r["tokens_per_second"],
                    "val": [{**v, "seconds": sps * max(0, v["step"] - 1)} for v in r["val"]]})
    return out


def equal_time(runs: list[dict]) -> float:
    """t*: the fastest run's training time, which every run reaches."""
    return min(r["wall_seconds"] for r in runs)


def evals_before(run: dict, seconds: float) -> int:
    """How many evaluations after step 0 the run has at or before ``seconds`` of training."""
    return sum(1 for v in run["val"] if v["step"] > 0 and v["seconds"] <= seconds)


def summarize(runs: list[dict]) -> dict[str, dict]:
    """Per variant: mean and spread (min..max, std) of val bpb at equal steps and equal time.

    ``delta_*`` are the mean differences to the baseline over the same seeds (paired), so the
    seed-to-seed variation that both runs share cancels.
    """
    t_star = equal_time(runs)
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
            "std_equal_time": statistics.stdev(timed) if len(timed) > 1 else 0.0,
            "seconds_equal_time": t_star,
            "evals_before_t_star": min(evals_before(r, t_star) for r in rs),
            "tokens_per_second": statistics.mean(r["tokens_per_second"] for r in rs),
            "tokens_per_second_spread": spread([r["tokens_per_second"] for r in rs]),
        }
        paired = [r for r in rs if r["seed"] in base]
        if paired:
            row["delta_equal_steps"] = statistics.mean(r["final_val_bpb"] - base[r["seed"]]["final_val_bpb"] for r in paired)
            row["delta_equal_time"] = statistics.mean(
                bpb_at_time(r, t_star) - bpb_at_time(base[r["seed"]], t_star) for r in paired
            )
        out[name] = row
    return out


def effects(runs: list[dict], comparisons=COMPARISONS) -> list[dict]:
    """The table: per comparison, the paired effect (with - without) at equal steps and equal time.

    A comparison is skipped when one of its variants has no runs; only the seeds both sides have
    are paired. ``verdict`` is "helps" (every seed lower with the change), "hurts" (every seed
    higher) or "noise" (the seed spread contains zero).
    """
    t_star = equal_time(runs)
    by = {(r["variant"], r["seed"]): r for r in runs}
    words = {"b lower": "helps", "b higher": "hurts", "noise": "noise"}
    out = []
    for name, kind, without, with_ in comparisons:
        seeds = sorted(s for (v, s) in by if v == with_ and (without, s) in by)
        if not seeds:
            continue
        row = {"change": name, "kind": kind, "without": without, "with": with_, "seeds": seeds}
        for reading, value in (("equal_steps", lambda r: r["final_val_bpb"]),
                               ("equal_time", lambda r: bpb_at_time(r, t_star))):
            d = paired_difference([value(by[without, s]) for s in seeds], [value(by[with_, s]) for s in seeds])
            row[reading] = {**d, "verdict": words[d["verdict"]]}
        row["speed_ratio"] = (statistics.median(by[with_, s]["tokens_per_second"] for s in seeds)
                              / statistics.median(by[without, s]["tokens_per_second"] for s in seeds))
        out.append(row)
    return out


def analyze(result: dict) -> dict:
    """``result`` with its readings computed from its runs (on the median clock): the per-variant
    ``summary``, the ``effects`` table, t* and the evaluations before it. Trains nothing."""
    runs = on_median_clock(result["runs"])
    t_star = equal_time(runs)
    return {**result, "clock": "the variant's median seconds per step over its seeds (on_median_clock)",
            "summary": summarize(runs), "effects": effects(runs), "equal_time_seconds": t_star,
            "evals_before_t_star": min(evals_before(r, t_star) for r in runs)}


def run_ablation(variants=DEFAULT_VARIANTS, seeds=DEFAULTS["seeds"], steps: int = DEFAULTS["steps"],
                 out: str | Path | None = None, command: str = "python -m nanogpt_core.lab.ablation", data=None,
                 **overrides) -> dict:
    """Train every variant with every seed at toy scale; write and return the JSON-able results.

    ``overrides`` change the toy config of every run (e.g. ``eval_every``, ``eval_tokens``; the batch
    is the toy scale's unless overridden). With ``out`` the file is rewritten after every run, so an
    interrupted ablation keeps its runs; a later call with the same settings resumes it and skips the
    (variant, seed) runs it has (resuming mixes sittings: for the book, run it in one go).
    """
    from ..data import toy_data

    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    base = BASELINE_STAGE
    # compile off: it does not change the math, and compiling each run costs more than a toy run
    overrides = {"steps": steps, "eval_every": DEFAULTS["eval_every"], "eval_tokens": DEFAULTS["eval_tokens"],
                 "compile": False, **overrides}
    cfg = stage_config(base, "toy", **overrides)
    data = data if data is not None else toy_data(cfg.model.vocab_size)
    result = {
        "baseline_stage": base, "overrides": overrides, "batch_size": cfg.train.batch_size,
        "seq_len": cfg.model.seq_len, "variants": {v: VARIANTS[v] for v in variants}, "runs": [],
    }
    if out and Path(out).exists():  # resume: keep the runs of an earlier call with the same settings
        earlier = json.loads(Path(out).read_text())
        if earlier.get("overrides") == overrides and earlier.get("baseline_stage") == base:
            result["runs"] = earlier["runs"]
            result["variants"] = {**earlier["variants"], **result["variants"]}
    done = {(r["variant"], r["seed"]) for r in result["runs"]}
    for seed in seeds:  # seed-major (interleaved by seed), so a partial file already compares every variant
        for name in variants:
            if (name, seed) in done:
                continue
            result["runs"].append(run_variant(name, seed, base, data, **overrides))
            result = analyze(result)
            print(f"{name} seed {seed}: val bpb {result['runs'][-1]['final_val_bpb']:.4f}, "
                  f"{result['runs'][-1]['tokens_per_second']:,.0f} tok/s", flush=True)
            result = save_result(result, out, command, seeds, cfg.train.device)
    return result


def format_effects(result: dict) -> str:
    """The effects as a text table (what the command prints and the chapter shows)."""
    lines = ["Δ bpb = with the change - without it, per seed (negative = the change helps): "
             "mean ± std [min, max] over seeds; speed = tok/s with / without",
             f"{'change':16s} {'kind':13s} {'equal steps':>40s} {'equal time':>40s} {'speed':>6s}"]
    for e in result["effects"]:
        cells = []
        for reading in ("equal_steps", "equal_time"):
            d = e[reading]
            cells.append(f"{d['mean']:+.3f} ± {d['std']:.3f} [{d['min']:+.3f}, {d['max']:+.3f}] {d['verdict']:>7s}")
        lines.append(f"{e['change']:16s} {e['kind']:13s} {cells[0]:>40s} {cells[1]:>40s} {e['speed_ratio']:6.2f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULTS["seeds"]))
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--batch-size", type=int, default=None, help="default: the toy scale's batch")
    ap.add_argument("--eval-every", type=int, default=DEFAULTS["eval_every"])
    ap.add_argument("--eval-tokens", type=int, default=DEFAULTS["eval_tokens"])
    ap.add_argument("--out", default="book/results/ablation_architecture.json")
    ap.add_argument("--analyze-only", action="store_true",
                    help="recompute the readings of the runs already in --out (no training) and rewrite it")
    args = ap.parse_args(argv)
    if args.analyze_only:
        result = analyze(json.loads(Path(args.out).read_text()))
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(format_effects(result))
        return
    extra = {"eval_tokens": args.eval_tokens, "eval_every": args.eval_every}
    if args.batch_size:
        extra["batch_size"] = args.batch_size
    command = "python -m nanogpt_core.lab.ablation " + " ".join(sys.argv[1:] if argv is None else argv)
    result = run_ablation(args.variants, args.seeds, args.steps, args.out, command.strip(), **extra)
    for name, row in result["summary"].items():
        print(f"{name:22s} equal steps {row['bpb_equal_steps']:.4f} ± {row['std_equal_steps']:.4f}"
              f"  equal time {row['bpb_equal_time']:.4f} ± {row['std_equal_time']:.4f}"
              f"  {row['tokens_per_second']:,.0f} tok/s")
    print(f"equal time t* = {result['equal_time_seconds']:.1f} s "
          f"(the slowest run has {result['evals_before_t_star']} evaluations at or before it)")
    print(format_effects(result))


if __name__ == "__main__":
    main()
