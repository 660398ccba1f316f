"""The schedules, side by side: learning rate, Muon's momentum and its weight decay, per step.

The 2019 recipe warms the learning rate up linearly and decays it along a cosine; the
speedrun (stage `muon`) holds it constant and ramps it linearly down over the last part of
the run (warmdown), warms Muon's momentum up from 0.85 to 0.95 over its first 300 steps, and
decays Muon's weight decay linearly to 0 over the run. ``apply_schedules`` sets all three on
the optimizer before each step, in one place, as nanochat's base_train.py (348fbb3) does; the
optimizers only read them.
"""

from __future__ import annotations

import math

import torch

from .config import TrainConfig


def lr_multiplier(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """The learning rate at ``step`` (0-based) as a fraction of the peak.

    cosine:   linear warmup over ``warmup_steps``, then
              f + (1 - f) * (1 + cos(pi * p)) / 2 with p the progress after warmup (0 -> 1)
    warmdown: linear warmup, constant 1.0 up to step N - W, then f + (1 - f) * (N - step) / W:
              a linear ramp towards f over the last W = round(``warmdown_frac`` * N) steps
              (the last step runs at f + (1 - f) / W), as nanochat's base_train.py (348fbb3)
    where f = ``final_lr_frac`` and N = ``total_steps``.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    f = cfg.final_lr_frac
    if cfg.schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, total_steps - 1 - cfg.warmup_steps)
        return f + (1 - f) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    warmdown_steps = round(cfg.warmdown_frac * total_steps)
    if warmdown_steps == 0 or step <= total_steps - warmdown_steps:
        return 1.0
    return f + (1 - f) * (total_steps - step) / warmdown_steps


MUON_MOMENTUM_START = 0.85  # Muon's momentum at step 0 ...
MUON_MOMENTUM_WARMUP = 300  # ... warmed up linearly to TrainConfig.muon_momentum over these steps


def momentum_at(step: int, start: float, end: float, warmup_steps: int) -> float:
    """Muon's momentum at ``step``: linear from ``start`` to ``end`` over ``warmup_steps``, then ``end``."""
    frac = min(1.0, step / warmup_steps) if warmup_steps else 1.0
    return start + frac * (end - start)


def weight_decay_at(step: int, weight_decay: float, total_steps: int | None) -> float:
    """Muon's weight decay at ``step``: linear from ``weight_decay`` to 0 over ``total_steps`` (None: constant)."""
    return weight_decay * max(0.0, 1 - step / total_steps) if total_steps else weight_decay


def apply_schedules(optimizer: torch.optim.Optimizer, step: int, cfg: TrainConfig) -> dict:
    """Set step ``step``'s learning rate, Muon momentum and Muon weight decay; return the three.

    Every group: lr = initial_lr * lr_multiplier(step). Muon's groups (``kind`` "muon") also:
    momentum = momentum_at(step, 0.85, cfg.muon_momentum, 300) and weight_decay =
    initial_weight_decay * (1 - step / N), N = cfg.steps. The schedules span ``cfg.steps``, so a run
    extended with --allow-longer-run reschedules all three.
    """
    now = {"lr_multiplier": lr_multiplier(step, cfg.steps, cfg),
           "muon_momentum": momentum_at(step, MUON_MOMENTUM_START, cfg.muon_momentum, MUON_MOMENTUM_WARMUP),
           "muon_weight_decay_multiplier": weight_decay_at(step, 1.0, cfg.steps)}
    set_lr(optimizer, now["lr_multiplier"])
    for group in optimizer.param_groups:
        if group.get("kind") == "muon":
            group["momentum"] = now["muon_momentum"]
            group["weight_decay"] = group["initial_weight_decay"] * now["muon_weight_decay_multiplier"]
    return now


def set_lr(optimizer: torch.optim.Optimizer, multiplier: float) -> None:
    """Scale every group's learning rate to ``multiplier`` times its initial (peak) value."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * multiplier
