"""Chapter 02's stability check: does the 2019 baseline's short run spike, and at which learning rate?

    python -m nanogpt_core.lab.baseline_stability --steps 40 --warmup 4 --lrs 3e-4 6e-4 1e-3 \\
        --seeds 1337 1338 1339 --json book/results/baseline_stability.json

Protocol. The chapter's live run: stage `gpt2` at toy scale (4 layers, width 256, 16 rows of
256 tokens per step, fp32, eager, AdamW with betas (0.9, 0.95), weight decay 0.1, clipping at
1.0, cosine schedule to 10% of the peak), ``--steps`` steps with a linear warmup of
``--warmup`` steps. Every arm is that config with only the peak learning rate ``lr`` changed;
each (lr, seed) pair is one run (a seed sets the initialization and the data order), and every
lr sees the same seeds. Per run we keep the train loss of every step and the final val bits per
byte (first ``--eval-tokens`` tokens of the held-out plays).

A *spike* is a step whose train loss rises more than ``SPIKE_NATS`` above the step before it
(batch-to-batch noise at this batch is a few hundredths of a nat); a run is *stable* when it has
no spike after warmup and no loss above ln V (the loss of a uniform guess) after step 0. The
summary gives, per lr: spikes over seeds, the largest rise, the highest loss after warmup, and
the final val bpb (mean, std, min, max over seeds); and, per pair of lrs, the seed-by-seed
difference in final bpb with its noise verdict (``lab.results.paired_difference``).

The diagnosis (``--diagnose``, added to an existing result file) replays one spiking run (lr
``--diagnose-lr``, the first seed) step by step, the same steps as ``train_step``, and records the
gradient norm of every step before clipping; then, for the largest spike, it evaluates the
parameters that produced it on the batches before, at and after it (a bad batch hurts one batch,
bad parameters hurt all three), measures which parameter tensors' last update raised the loss
(undoing the update of one tensor at a time), and counts how many positions predict the same token.

    python -m nanogpt_core.lab.baseline_stability --diagnose --json book/results/baseline_stability.json

At the scoreboard's budget (``--scoreboard-seconds S``, added to an existing result file): the
scoreboard's baseline run (``scoreboard.run_stage`` of stage gpt2, S seconds of training, warmup
20 steps, the scoreboard's seeds) at each ``--lrs``; per run the final val bpb and the largest
one-step rise of the train loss after warmup. The scoreboard itself holds the preset's rate.

    python -m nanogpt_core.lab.baseline_stability --scoreboard-seconds 360 --lrs 6e-4 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from ..config import stage_config
from ..data import toy_data
from ..model import GPT
from ..optim import build_optimizer
from ..schedules import lr_multiplier
from ..train import build_loader, train, train_step
from .results import describe_difference, paired_difference, save_result, spread
from .scoreboard import largest_rise, run_stage

DEFAULT_SEEDS = (1337, 1338, 1339)
DEFAULT_LRS = (3e-4, 6e-4, 1e-3)
SPIKE_NATS = 0.3


def spikes(losses: list[float], after: int = 0) -> list[int]:
    """The 1-based steps (after step ``after``) whose loss rose more than SPIKE_NATS above the step before."""
    return [i + 1 for i in range(max(1, after), len(losses)) if losses[i] - losses[i - 1] > SPIKE_NATS]


def stability(losses: list[float], warmup: int, vocab_size: int) -> dict:
    """The stability figures of one run's train losses (see the module docstring)."""
    spiked = spikes(losses, warmup)
    peak = max(losses[1:]) if len(losses) > 1 else losses[0]
    return {"spike_steps": spiked, "n_spikes": len(spiked), "max_rise": largest_rise(losses, warmup),
            "max_loss_after_warmup": max(losses[warmup:]) if len(losses) > warmup else peak,
            "above_uniform": peak > math.log(vocab_size), "stable": not spiked and peak <= math.log(vocab_size)}


def run(lr: float, seed: int, steps: int, warmup: int, eval_tokens: int, data=None) -> dict:
    cfg = stage_config("gpt2", "toy", steps=steps, warmup_steps=warmup, lr=lr, seed=seed, eval_every=0,
                       eval_tokens=eval_tokens)
    data = data or toy_data(cfg.model.vocab_size)
    _, result = train(cfg, data, progress=False)
    return {"lr": lr, "seed": seed, "losses": result.losses, "final_val_bpb": result.final_val_bpb,
            "final_val_loss": result.final_val_loss, "wall_seconds": result.wall_seconds,
            **stability(result.losses, warmup, cfg.model.vocab_size)}


def summarize(runs: list[dict], lrs, seeds) -> dict:
    by = {(r["lr"], r["seed"]): r for r in runs}
    per_lr = {}
    for lr in lrs:
        rs = [by[(lr, s)] for s in seeds]
        per_lr[f"{lr:g}"] = {"final_bpb": spread([r["final_val_bpb"] for r in rs]),
                             "spikes": sum(r["n_spikes"] for r in rs), "stable_seeds": sum(r["stable"] for r in rs),
                             "max_rise": max(r["max_rise"] for r in rs),
                             "max_loss_after_warmup": max(r["max_loss_after_warmup"] for r in rs)}
    paired = {}
    for i, a in enumerate(lrs):
        for b in lrs[i + 1:]:
            paired[f"lr {b:g} - lr {a:g}"] = paired_difference([by[(a, s)]["final_val_bpb"] for s in seeds],
                                                               [by[(b, s)]["final_val_bpb"] for s in seeds])
    best = min(per_lr, key=lambda k: per_lr[k]["final_bpb"]["mean"])
    return {"per_lr": per_lr, "paired": paired, "best_mean_bpb_lr": best,
            "best_at_edge": best in (f"{min(lrs):g}", f"{max(lrs):g}")}


def sweep(steps: int = 40, warmup: int = 4, lrs=DEFAULT_LRS, seeds=DEFAULT_SEEDS, eval_tokens: int = 16_384) -> dict:
    t0 = time.perf_counter()
    data = toy_data(stage_config("gpt2", "toy").model.vocab_size)
    runs = []
    for seed in seeds:  # seed-major: a sweep stopped early still holds every lr for the first seeds
        for lr in lrs:
            runs.append(run(lr, seed, steps, warmup, eval_tokens, data))
            r = runs[-1]
            print(f"lr {lr:g} seed {seed}: final val {r['final_val_bpb']:.4f} bpb, spikes at {r['spike_steps']}, "
                  f"max rise {r['max_rise']:+.2f} nats", flush=True)
    return {"steps": steps, "warmup_steps": warmup, "lrs": list(lrs), "eval_tokens": eval_tokens,
            "spike_nats": SPIKE_NATS, "ln_vocab": math.log(stage_config("gpt2", "toy").model.vocab_size),
            "runs": runs, "summary": summarize(runs, list(lrs), list(seeds)),
            "total_seconds": time.perf_counter() - t0}


def at_scoreboard_budget(seconds: float, lrs, seeds, eval_tokens: int = 16_384) -> dict:
    """The scoreboard's baseline (stage gpt2, ``seconds`` of training) at each peak rate in ``lrs``."""
    data = toy_data(stage_config("gpt2", "toy").model.vocab_size)
    runs = []
    for seed in seeds:
        for lr in lrs:
            r = run_stage("gpt2", "toy", seconds, data, seed=seed, lr=lr, eval_tokens=eval_tokens)
            runs.append({"lr": lr, "seed": seed, "final_val_bpb": r["final_val_bpb"], "steps": r["steps"],
                         "largest_loss_rise": r["largest_loss_rise"], "spiked": r["largest_loss_rise"] > SPIKE_NATS})
            print(f"lr {lr:g} seed {seed}: {r['steps']} steps, final val {r['final_val_bpb']:.4f} bpb, largest rise "
                  f"{r['largest_loss_rise']:+.2f} nats", flush=True)
    summary = {f"{lr:g}": {"final_bpb": spread([r["final_val_bpb"] for r in runs if r["lr"] == lr]),
                           "spiked_seeds": sum(r["spiked"] for r in runs if r["lr"] == lr)} for lr in lrs}
    return {"seconds": seconds, "lrs": list(lrs), "seeds": list(seeds), "runs": runs, "summary": summary}


def diagnose(lr: float, seed: int, steps: int, warmup: int, expected_losses: list[float] | None = None) -> dict:
    """Replay the run (lr, seed) up to its largest spike, recording what the module docstring lists."""
    cfg = stage_config("gpt2", "toy", steps=steps, warmup_steps=warmup, lr=lr, seed=seed, eval_every=0)
    t = cfg.train
    data = toy_data(cfg.model.vocab_size)
    torch.manual_seed(t.seed)
    model = GPT(cfg.model)
    optimizer = build_optimizer(model, t)
    loader = build_loader(cfg, data)
    losses, norms, params_before, batches = [], [], None, []
    if expected_losses is None:
        raise ValueError("diagnose needs the losses of the run from the sweep, to find its largest spike")
    spike = max(range(1, len(expected_losses)), key=lambda i: expected_losses[i] - expected_losses[i - 1])
    for step in range(spike):  # spike: the 0-based step whose loss jumped; its parameters come from step spike - 1
        x, y = loader.next_batch()
        batches.append((x, y))
        if step == spike - 1:
            params_before = {k: v.detach().clone() for k, v in model.named_parameters()}
        done = train_step(model, model, optimizer, [(x, y)], step, t)
        norms.append(done.grad_norm.item())
        losses.append(done.loss.item())
    batches += [loader.next_batch(), loader.next_batch()]
    if expected_losses is not None:  # the replay is the run of the sweep, step for step
        assert all(abs(a - b) < 1e-4 for a, b in zip(losses, expected_losses)), "the replay left the sweep's run"
    with torch.no_grad():
        x, y = batches[spike]
        neighbours = {f"batch of step {spike + 1 + d}": model(*batches[spike + d]).item() for d in (-1, 0, 1)}
        predicted = model(x).argmax(-1).flatten()
        top_share = torch.bincount(predicted).max().item() / predicted.numel()
        culprits = []
        named = dict(model.named_parameters())
        for name, before in params_before.items():
            after = named[name].detach().clone()
            named[name].copy_(before)
            undone = model(x, y).item()
            named[name].copy_(after)
            culprits.append({"param": name, "loss_if_undone": undone,
                             "relative_change": ((after - before).norm() / before.norm()).item()})
    culprits.sort(key=lambda c: c["loss_if_undone"])
    # the gradient at the spiking parameters (the next step's, before clipping)
    x, y = batches[spike]
    model(x, y).backward()
    norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")).item())
    model.zero_grad(set_to_none=True)
    return {"lr": lr, "seed": seed, "spike_step": spike + 1, "losses": losses, "grad_norms": norms,
            "grad_clip": t.grad_clip, "lr_multiplier_of_the_update": lr_multiplier(spike - 1, t.steps, t),
            "loss_of_spiking_params": neighbours, "top_prediction_share": top_share, "culprits": culprits[:5]}


def add_section(path: str | Path, key: str, section: dict) -> dict:
    """Add ``section`` under ``key`` to the result file at ``path`` (written by a sweep before it)."""
    result = json.loads(Path(path).read_text())
    result[key] = section
    Path(path).write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nanogpt_core.lab.baseline_stability", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--lrs", type=float, nargs="+", default=list(DEFAULT_LRS))
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    p.add_argument("--eval-tokens", type=int, default=16_384)
    p.add_argument("--json", default="book/results/baseline_stability.json")
    p.add_argument("--diagnose", action="store_true", help="add the diagnosis of one spike to the --json result")
    p.add_argument("--diagnose-lr", type=float, default=1e-3)
    p.add_argument("--scoreboard-seconds", type=float, metavar="S",
                   help="add the scoreboard's baseline at S seconds of training, at each --lrs, to the --json result")
    args = p.parse_args(argv)
    if args.scoreboard_seconds:
        budget = at_scoreboard_budget(args.scoreboard_seconds, args.lrs, args.seeds, args.eval_tokens)
        budget = save_result(budget, None, f"python -m nanogpt_core.lab.baseline_stability --scoreboard-seconds "
                             f"{args.scoreboard_seconds:g} --lrs {' '.join(f'{x:g}' for x in args.lrs)} --seeds "
                             f"{' '.join(map(str, args.seeds))}", seeds=args.seeds)
        add_section(args.json, "scoreboard_budget", budget)
        return 0
    if args.diagnose:
        result = json.loads(Path(args.json).read_text())
        seed = result["seeds"][0]
        run_ = next(r for r in result["runs"] if r["lr"] == args.diagnose_lr and r["seed"] == seed)
        d = diagnose(args.diagnose_lr, seed, result["steps"], result["warmup_steps"], run_["losses"])
        d["command"] = f"python -m nanogpt_core.lab.baseline_stability --diagnose --diagnose-lr {args.diagnose_lr:g}"
        add_section(args.json, "diagnosis", d)
        print(json.dumps({k: v for k, v in d.items() if k != "losses"}, indent=1))
        return 0
    command = (f"python -m nanogpt_core.lab.baseline_stability --steps {args.steps} --warmup {args.warmup} "
               f"--lrs {' '.join(f'{x:g}' for x in args.lrs)} --seeds {' '.join(map(str, args.seeds))} "
               f"--eval-tokens {args.eval_tokens}")
    result = sweep(args.steps, args.warmup, args.lrs, args.seeds, args.eval_tokens)
    result = save_result(result, args.json, command, seeds=args.seeds)
    for lr, s in result["summary"]["per_lr"].items():
        f = s["final_bpb"]
        print(f"lr {lr:>6}: {s['stable_seeds']}/{f['n']} seeds stable, {s['spikes']} spikes, largest rise "
              f"{s['max_rise']:+.2f} nats; final val {f['mean']:.4f} ± {f['std']:.4f} bpb")
    for name, d in result["summary"]["paired"].items():
        print(describe_difference(name, d))
    print(f"total {result['total_seconds']:.0f} s on {result['hardware']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
