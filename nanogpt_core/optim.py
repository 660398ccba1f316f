"""Optimizers and learning-rate schedules.

The 2019 recipe: AdamW on every parameter, weight decay on matrices only, one peak learning
rate, linear warmup then cosine decay. The speedrun's recipe (stage `muon`) routes hidden
matrices to Muon and keeps AdamW for embeddings, head and scalars.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.optim.adamw import adamw as adamw_update  # the functional form of torch.optim.AdamW's step

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


def process_count() -> int:
    """How many processes share this run: the size of the started process group, else 1."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def set_lr(optimizer: torch.optim.Optimizer, multiplier: float) -> None:
    """Scale every group's learning rate to ``multiplier`` times its initial (peak) value."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * multiplier


class ShardedAdamW(torch.optim.Optimizer):
    """AdamW whose state is split across the processes of a run (ZeRO stage 1), as the speedrun's.

    The update is torch's AdamW step itself (its functional form, run on what this process
    owns): decoupled weight decay and bias-corrected moments,
        m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2,
        p <- p (1 - lr wd) - lr / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)
    where g is the gradient averaged over the W processes. A parameter with at least
    ``min_shard_numel`` elements and rows divisible by W is split by rows: a reduce-scatter
    gives each process the averaged gradient of its rows, it updates them with its share of
    m and v, and an all-gather puts the whole parameter back on every process. Smaller ones
    (scalars, gains) are all-reduced and updated whole everywhere. Either way ``step()``
    averages the gradients itself: ``self_synced_params`` lists them for the training loop.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 world_size: int | None = None, min_shard_numel: int = 1024):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        if world_size is None:
            world_size = process_count()
        self.world_size, self.rank = world_size, (dist.get_rank() if world_size > 1 else 0)
        self.min_shard_numel = min_shard_numel
        self.self_synced_params = [p for g in self.param_groups for p in g["params"]] if world_size > 1 else []

    def is_sharded(self, p: torch.Tensor) -> bool:
        return self.world_size > 1 and p.numel() >= self.min_shard_numel and p.shape[0] % self.world_size == 0

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("ShardedAdamW.step takes no closure")
        W = self.world_size
        for group in self.param_groups:
            values, grads, sharded = [], [], []  # what this process updates: whole params or its rows
            for p in group["params"]:
                if p.grad is None:
                    if W > 1:
                        raise RuntimeError("sharded AdamW needs a gradient for every parameter on every rank")
                    continue
                if self.is_sharded(p):
                    rows = p.shape[0] // W
                    grad = torch.empty_like(p[:rows])
                    dist.reduce_scatter_tensor(grad, p.grad.contiguous())  # SUM: gloo has no AVG
                    values.append(p[self.rank * rows : (self.rank + 1) * rows].clone())
                    sharded.append((p, values[-1]))
                else:
                    grad = p.grad.clone()
                    if W > 1:
                        dist.all_reduce(grad)
                    values.append(p)
                grads.append(grad.div_(W) if W > 1 else grad)
                state = self.state[p]
                if not state:  # moments shaped like what this process updates
                    state.update(step=torch.zeros(()), exp_avg=torch.zeros_like(values[-1]),
                                 exp_avg_sq=torch.zeros_like(values[-1]))
            states = [self.state[p] for p in group["params"] if p.grad is not None]
            beta1, beta2 = group["betas"]
            adamw_update(  # torch's own AdamW update, on the values this process owns
                values, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
                [s["step"] for s in states], amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
                weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
            )
            for p, mine in sharded:
                dist.all_gather_into_tensor(p, mine)
