"""Optimizers and learning-rate schedules.

The 2019 recipe: AdamW on every parameter, weight decay on matrices only, one peak learning
rate, linear warmup then cosine decay. The speedrun's recipe (stage `muon`) routes hidden
matrices to Muon and keeps AdamW for embeddings, head and scalars.
"""

from __future__ import annotations

import math

import torch

from .config import TrainConfig


def lr_multiplier(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """The learning rate at ``step`` (0-based) as a fraction of the peak.

    cosine:   linear warmup over ``warmup_steps``, then
              f + (1 - f) * (1 + cos(pi * p)) / 2 with p the progress after warmup (0 -> 1)
    warmdown: linear warmup, constant 1.0, then a linear ramp to f over the last
              ``warmdown_frac`` of the steps
    where f = ``final_lr_frac``.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    f = cfg.final_lr_frac
    if cfg.schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, total_steps - 1 - cfg.warmup_steps)
        return f + (1 - f) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    warmdown_steps = round(cfg.warmdown_frac * total_steps)
    steps_left = total_steps - 1 - step
    if warmdown_steps == 0 or steps_left >= warmdown_steps:
        return 1.0
    return f + (1 - f) * steps_left / warmdown_steps


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on 2-D weights and none on biases and norm gains."""
    if cfg.optimizer == "muon":  # Muon for block matrices, AdamW for the rest (see muon.py)
        from .muon import build_muon_adamw

        return build_muon_adamw(model, cfg)
    if cfg.optimizer != "adamw":
        raise NotImplementedError(f"optimizer {cfg.optimizer!r} is not built yet; use 'adamw' or 'muon'")
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # fused: one kernel for the whole update (the `compile` stage; see compile.py for why not torch.compile)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=cfg.compile or None)
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]
    return opt


def set_lr(optimizer: torch.optim.Optimizer, multiplier: float) -> None:
    """Scale every group's learning rate to ``multiplier`` times its initial (peak) value."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * multiplier
