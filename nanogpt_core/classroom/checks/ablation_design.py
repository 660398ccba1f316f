"""Checks for chapter 10 (what did not work): a variant built from its math, and an ablation designed for form.

    check_half_rope_tables(fn)   fn(seq_len, head_dim, base=1024.0) -> (cos, sin), each (seq_len, head_dim/2):
                                 half-truncated RoPE as modded-nanogpt's record 17 has it, D/4 frequencies
                                 (1/base)**linspace(0, 1, D/4) then D/4 zeros; compared with a reference
                                 on random sizes and bases, with the invariants named on failure
    check_ablation(fn)           fn(run) -> {"hypothesis", "baseline", "variant", "seeds", "results", "summary"}:
                                 an ablation of one of the ladder's switches, run through ``run(cfg) -> bpb``.
                                 The check hands the function a stand-in ``run`` (instant, with a known
                                 effect or a known tie) twice and verifies the design: the configs differ in
                                 exactly one switch, the hypothesis names it, at least 2 seeds, every seed run
                                 on both sides, the results are what ``run`` returned, and the summary (mean
                                 paired difference, verdict noise / real by the seed spread) follows from them.
"""

from __future__ import annotations

import dataclasses
import json
import random
import statistics

import torch

from ...config import STAGES, Config
from ...model import rotary_tables
from ..watch import answered_by
from . import Case, CheckFailed, call_student, check_function

# ---- Exercise 10.1: half-truncated RoPE tables ------------------------------------------------------


def half_rope_tables(seq_len: int, head_dim: int, base: float = 1024.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: angle[t, i] = t * theta_i with theta = ((1/base)**linspace(0, 1, D/4), then D/4 zeros)."""
    quarter = head_dim // 4
    theta = torch.cat([(1 / base) ** torch.linspace(0.0, 1.0, quarter), torch.zeros(quarter)])
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), theta)
    return angles.cos(), angles.sin()


def _diagnose_rope(got, seq_len: int, head_dim: int, base: float, where: str) -> None:
    """A message that says which property of the tables is off, not what the values should be."""
    cos, sin = got
    quarter = head_dim // 4
    if not (torch.all(cos[:, quarter:] == 1) and torch.all(sin[:, quarter:] == 0)):
        raise CheckFailed(f"{where}: the last D/4 channel pairs (columns {quarter}..{2 * quarter - 1}) must not rotate "
                          "at any position (angle 0)")
    if seq_len > 1 and torch.all(cos[:, :quarter] == 1):
        raise CheckFailed(f"{where}: the first D/4 channel pairs never rotate; they carry the position")
    if seq_len > 1:
        angle1 = torch.atan2(sin[1, :quarter], cos[1, :quarter])  # the frequencies, read at t = 1
        if abs(angle1[0].item() - 1.0) > 1e-4:
            raise CheckFailed(f"{where}: the fastest pair (column 0) should turn by 1 radian per token")
        if quarter > 1 and abs(angle1[-1].item() - 1 / base) > 1e-6:
            raise CheckFailed(f"{where}: the slowest rotating pair (column {quarter - 1}) should turn by 1/base "
                              "radians per token")
    raise CheckFailed(f"{where}: the frequencies between the fastest and the slowest rotating pair are off: "
                      "they are evenly spaced in the exponent (a geometric sequence from 1 to 1/base)")


@answered_by(half_rope_tables, rotary_tables, "lab/ablations_negative.py:half_truncated_rotary_tables")
def check_half_rope_tables(student) -> bool:
    """Compare ``student(seq_len, head_dim, base)`` with half-truncated RoPE's tables, and say which property is off."""
    rng = random.Random()
    cases = [Case("toy model: seq 256, head_dim 64, base 1024", (256, 64, 1024.0)),
             Case("a small head: seq 16, head_dim 8, base 1024", (16, 8, 1024.0)),
             Case("nanochat run 1's head: seq 2048, head_dim 128", (2048, 128, 1024.0))]
    cases += [Case(f"random #{i}", (rng.randrange(2, 300), 4 * rng.randrange(2, 33), float(rng.choice([100, 500, 1024, 10_000]))))
              for i in range(3)]

    def wrapped(seq_len, head_dim, base):
        got = student(seq_len, head_dim, base)
        where = f"half_rope_tables, case seq_len={seq_len}, head_dim={head_dim}, base={base:g}"
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise CheckFailed(f"{where}: return a pair (cos, sin)")
        cos, sin = got
        for name, t in (("cos", cos), ("sin", sin)):
            if not isinstance(t, torch.Tensor):
                raise CheckFailed(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
            if tuple(t.shape) != (seq_len, head_dim // 2):
                raise CheckFailed(f"{where}: {name} has shape {tuple(t.shape)}, expected (seq_len, head_dim/2) = "
                                  f"{(seq_len, head_dim // 2)}: one column per channel pair")
            if t.dtype != torch.float32:
                raise CheckFailed(f"{where}: {name} has dtype {t.dtype}, expected torch.float32")
        ref = half_rope_tables(seq_len, head_dim, base)
        if not (torch.allclose(cos, ref[0], atol=1e-4) and torch.allclose(sin, ref[1], atol=1e-4)):
            _diagnose_rope((cos, sin), seq_len, head_dim, base, where)
        return ref  # the values matched: hand the reference on so that check_function's comparison passes

    return check_function(wrapped, half_rope_tables, cases, "half_rope_tables", atol=1e-4)


# ---- Exercise 10.2: an ablation, checked for form -------------------------------------------------

# The ladder's switches: every config field that some stage sets
SWITCHES = sorted({name for stage in STAGES.values() for name in stage.switches})
KEYS = ("hypothesis", "baseline", "variant", "seeds", "results", "summary")


def _fields(cfg: Config) -> dict:
    """Every model and train field of ``cfg`` but the seed (the stage and scale labels are names, not settings)."""
    d = {**{f"model.{k}": v for k, v in dataclasses.asdict(cfg.model).items()},
         **{f"train.{k}": v for k, v in dataclasses.asdict(cfg.train).items()}}
    d.pop("train.seed")
    return d


def _key(cfg: Config) -> str:
    return json.dumps(_fields(cfg), sort_keys=True, default=str)


class StandInRun:
    """``run(cfg) -> final val bpb`` without training: a made-up bpb per (config, seed), recorded.

    ``effect``: how much the second config it sees scores above the first (a clear effect);
    ``tie``: instead, the second config scores ``tie`` above the first on alternate seeds and ``tie``
    below on the others, so the per-seed differences straddle zero.
    """

    def __init__(self, effect: float = 0.0, tie: float = 0.0, seed: int = 0):
        self.effect, self.tie = effect, tie
        self.rng = random.Random(seed)
        self.configs: list[str] = []
        self.seed_noise: dict[int, float] = {}
        self.calls: dict[tuple[int, int], float] = {}  # (config index, seed) -> the bpb returned

    def __call__(self, cfg) -> float:
        if not isinstance(cfg, Config):
            raise CheckFailed(f"run takes a Config (from stage_config or cfg.replace), got {type(cfg).__name__}")
        key = _key(cfg)
        if key not in self.configs:
            if len(self.configs) == 2:
                raise CheckFailed("run was called with a third config: an ablation runs two configs, a baseline "
                                  "and a variant, each with several seeds (set the seed with cfg.replace(seed=s))")
            self.configs.append(key)
        which, seed = self.configs.index(key), cfg.train.seed
        noise = self.seed_noise.setdefault(seed, self.rng.uniform(-0.05, 0.05))
        value = 2.5 + noise
        if which == 1:
            parity = list(self.seed_noise).index(seed) % 2  # alternate by the order the seeds first appear
            value += self.effect + (self.tie if parity == 0 else -self.tie) + self.rng.uniform(-0.002, 0.002)
        self.calls[(which, seed)] = value
        return value


def _verdict(diffs) -> str:
    """'noise' when the seed-to-seed range of the paired differences contains zero, else 'real'."""
    return "noise" if min(diffs) <= 0.0 <= max(diffs) else "real"


def _mentions(text: str, field: str) -> bool:
    text = text.lower().replace("-", "_").replace(" ", "_")
    return field.lower() in text


def _validate(out, runner: StandInRun, scenario: str) -> None:
    where = f"ablation ({scenario})"
    if not isinstance(out, dict) or not set(KEYS) <= set(out):
        have = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise CheckFailed(f"{where}: return a dict with the keys {list(KEYS)}, got {have}")
    base, var = out["baseline"], out["variant"]
    if not isinstance(base, Config) or not isinstance(var, Config):
        raise CheckFailed(f"{where}: 'baseline' and 'variant' must be Configs (stage_config(...), cfg.replace(...))")
    fb, fv = _fields(base), _fields(var)
    changed = sorted(k for k in fb if fb[k] != fv[k])
    if not changed:
        raise CheckFailed(f"{where}: the baseline and the variant are the same config: change one switch")
    if len(changed) > 1:
        raise CheckFailed(f"{where}: the baseline and the variant differ in {len(changed)} fields "
                          f"({', '.join(changed)}): an ablation changes exactly one switch, so that the difference "
                          "has one cause")
    field = changed[0].split(".", 1)[1]
    if field not in SWITCHES:
        raise CheckFailed(f"{where}: the configs differ in '{field}', which is not one of the ladder's switches "
                          f"({', '.join(SWITCHES)})")
    hyp = out["hypothesis"]
    if not isinstance(hyp, str) or not hyp.strip():
        raise CheckFailed(f"{where}: 'hypothesis' must be a sentence: what you expect the switch to do, and why")
    if not _mentions(hyp, field):
        raise CheckFailed(f"{where}: the hypothesis does not name the switch it is about ('{field}')")
    seeds = out["seeds"]
    if not isinstance(seeds, (list, tuple)) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise CheckFailed(f"{where}: 'seeds' must be a list of int seeds")
    if len(set(seeds)) < 2 or len(set(seeds)) != len(seeds):
        raise CheckFailed(f"{where}: 'seeds' must hold at least 2 different seeds (got {list(seeds)}): one seed "
                          "cannot tell an effect from noise")
    keys = {"baseline": _key(base), "variant": _key(var)}
    for side, key in keys.items():
        if key not in runner.configs:
            raise CheckFailed(f"{where}: run was never called with the {side} config (only the seed may change "
                              "between runs of one side)")
    results = out["results"]
    if not isinstance(results, dict) or set(results) != {"baseline", "variant"}:
        raise CheckFailed(f"{where}: 'results' must be {{'baseline': {{seed: bpb}}, 'variant': {{seed: bpb}}}}")
    for side, key in keys.items():
        per_seed = results[side]
        if not isinstance(per_seed, dict) or set(per_seed) != set(seeds):
            got = sorted(per_seed) if isinstance(per_seed, dict) else type(per_seed).__name__
            raise CheckFailed(f"{where}: results['{side}'] must map every seed of 'seeds' to its bpb (the same seeds "
                              f"on both sides); its keys are {got}, the seeds {sorted(seeds)}")
        which = runner.configs.index(key)
        for s in seeds:
            if (which, s) not in runner.calls:
                raise CheckFailed(f"{where}: the {side} config was never run with seed {s}: give each run its seed "
                                  "(cfg.replace(seed=s)), so that both sides see the same seeds")
            if not isinstance(per_seed[s], (int, float)) or abs(per_seed[s] - runner.calls[(which, s)]) > 1e-12:
                raise CheckFailed(f"{where}: results['{side}'][{s}] is not the bpb that run returned for the {side} "
                                  f"with seed {s}")
    diffs = [results["variant"][s] - results["baseline"][s] for s in seeds]
    summary = out["summary"]
    if not isinstance(summary, dict) or not {"mean_difference", "verdict"} <= set(summary):
        raise CheckFailed(f"{where}: 'summary' must be a dict with 'mean_difference' and 'verdict'")
    mean = summary["mean_difference"]
    if not isinstance(mean, (int, float)) or abs(mean - statistics.mean(diffs)) > 1e-9:
        flipped = isinstance(mean, (int, float)) and abs(mean + statistics.mean(diffs)) <= 1e-9
        raise CheckFailed(f"{where}: summary['mean_difference'] is not the mean over seeds of the paired difference"
                          + (" (its sign is flipped: variant minus baseline)" if flipped else
                             " variant - baseline"))
    if summary["verdict"] not in ("noise", "real"):
        raise CheckFailed(f"{where}: summary['verdict'] must be 'noise' or 'real', got {summary['verdict']!r:.40}")
    if summary["verdict"] != _verdict(diffs):
        raise CheckFailed(f"{where}: the verdict '{summary['verdict']}' does not follow from the per-seed differences: "
                          "a difference is noise when the seeds disagree on its sign (their range contains zero)")


@answered_by(_verdict)
def check_ablation(student) -> bool:
    """Run ``student(run)`` with a stand-in ``run`` (a clear effect, then a tie) and check the design for form."""
    seed = random.randrange(2**31)
    scenarios = {"a run where the switch clearly matters": StandInRun(effect=random.choice([-0.1, 0.1]), seed=seed),
                 "a run where the seeds disagree": StandInRun(tie=0.02, seed=seed + 1)}
    for scenario, runner in scenarios.items():
        out = call_student(student, "ablation", f"ablation ({scenario})", runner)
        _validate(out, runner, scenario)
    fb, fv = _fields(out["baseline"]), _fields(out["variant"])
    field = next(k for k in fb if fb[k] != fv[k]).split(".", 1)[1]
    print(f"✓ ablation: one switch ('{field}'), {len(out['seeds'])} seeds on both sides, results and verdicts follow "
          "from the runs (checked on a clear effect and on a tie)")
    return True
