"""The optimizers a run builds: AdamW (whole, or sharded across processes) and Muon + AdamW.

The 2019 recipe: AdamW on every parameter, weight decay on matrices only, one peak learning
rate. The speedrun's recipe (stage `muon`) routes the hidden matrices to Muon (muon.py) and
keeps AdamW for embeddings, head and scalars, each role at its own rate. The schedules that
scale these rates over a run are in schedules.py.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.optim.adamw import adamw as adamw_update  # the functional form of torch.optim.AdamW's step

from .config import TrainConfig
from .hardware import all_gather_single, process_count, reduce_scatter_single
from .muon import Muon


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on 2-D weights and none on biases and norm gains."""
    if cfg.optimizer == "muon":  # Muon for block matrices, AdamW for the rest
        return build_muon_adamw(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # fused: one kernel for the whole update (the `compile` stage; see compile.py for why not torch.compile)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=cfg.compile or None)
    return with_schedule_bases(opt)


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
                    reduce_scatter_single(grad, p.grad.contiguous())  # SUM: gloo has no AVG
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
                all_gather_single(p, mine)


# ---- the speedrun's optimizer: Muon for hidden matrices, AdamW for the rest -------------------


class MuonAdamW:
    """Several optimizers stepped as one (AdamW for embeddings/head/scalars, Muon for matrices).

    ``param_groups`` is the concatenation of theirs, so a scheduler that sets
    ``group["lr"] = group["initial_lr"] * m`` on every group schedules them all.
    """

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.optimizers = optimizers
        self.self_synced_params = [p for opt in optimizers.values() for p in getattr(opt, "self_synced_params", [])]

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def route_parameters(model: torch.nn.Module) -> dict[str, list[torch.Tensor]]:
    """Sort every trainable parameter of a GPT into exactly one role, by the module that holds it.

    muon:       2-D matrices inside the transformer blocks
    unembed:    the output head ``lm_head`` (the token table too, when tied to it)
    embed:      the token table ``wte`` and the value-embedding tables
    position:   a learned position table ``wpe`` (it takes the rate of the token table it is added to)
    x0_scalar / resid_scalar: the per-layer residual scalars ``x0_lambdas`` / ``resid_lambdas``
    vector:     every other parameter of the blocks and the final norm (gains, biases)
    A parameter outside these modules raises, so none is silently forgotten.
    """
    def trainable(params):
        return [p for p in params if p is not None and p.requires_grad]

    tied = model.lm_head.weight is model.wte.weight
    block_params = trainable(model.blocks.parameters())
    roles = {
        "muon": [p for p in block_params if p.ndim == 2],
        "unembed": trainable([model.lm_head.weight]),
        "embed": trainable(([] if tied else [model.wte.weight]) + [t.weight for t in model.value_embeds.values()]),
        "position": trainable([model.wpe.weight] if model.wpe is not None else []),
        "x0_scalar": trainable([getattr(model, "x0_lambdas", None)]),
        "resid_scalar": trainable([getattr(model, "resid_lambdas", None)]),
        "vector": [p for p in block_params if p.ndim != 2] + trainable(model.ln_f.parameters()),
    }
    routed = {id(p) for ps in roles.values() for p in ps}
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in routed:
            raise ValueError(f"parameter {name!r} of shape {tuple(p.shape)} has no optimizer group; "
                             "add it to route_parameters")
    assert len(routed) == sum(map(len, roles.values())), "a parameter was routed twice"
    return roles


def build_muon_adamw(model: torch.nn.Module, cfg) -> MuonAdamW:
    """The speedrun's optimizer for ``model`` with the rates of TrainConfig ``cfg``.

    AdamW (betas (0.8, 0.95), eps 1e-10, no weight decay; its state split across the
    processes of a multi-process run, ``optim.ShardedAdamW``): head ``unembedding_lr``, embedding
    tables ``embedding_lr`` (both times (d_model / 768)^-0.5, nanochat's width rule), a learned
    position table the rate of the token table (the head's when tied), residual
    scalars ``scalar_lr`` * 0.01, x0 scalars ``scalar_lr`` with beta1 0.96, norm gains and
    biases the baseline ``lr``. Muon for the block matrices at ``matrix_lr`` (q, k and v apart, as
    run 1: ``muon_groups``), cautious weight decay ``muon_weight_decay`` * (12 / n_layer)^2; the
    training loop decays it linearly to 0 over the run and warms the momentum up (``apply_schedules``).
    """
    roles = route_parameters(model)
    tied = model.lm_head.weight is model.wte.weight
    d_model = model.cfg.n_embd
    width_scale = (d_model / 768) ** -0.5
    betas = (0.8, 0.95)
    spec = {
        "unembed": dict(lr=cfg.unembedding_lr * width_scale, betas=betas),
        "embed": dict(lr=cfg.embedding_lr * width_scale, betas=betas),
        # GPT-2's learned positions are added to the token table: same rate as that table (0.3 would drown it)
        "position": dict(lr=(cfg.unembedding_lr if tied else cfg.embedding_lr) * width_scale, betas=betas),
        "resid_scalar": dict(lr=cfg.scalar_lr * 0.01, betas=betas),
        "x0_scalar": dict(lr=cfg.scalar_lr, betas=(0.96, 0.95)),
        "vector": dict(lr=cfg.lr, betas=betas),
    }
    adam_groups = [dict(params=roles[r], role=r, **kw) for r, kw in spec.items() if roles[r]]
    # one process: torch's AdamW; several: the same update with its state split across them
    adamw = ShardedAdamW if process_count() > 1 else torch.optim.AdamW
    optimizers = {"adamw": adamw(adam_groups, eps=1e-10, weight_decay=0.0)}
    if roles["muon"]:
        optimizers["muon"] = Muon(muon_groups(model, roles["muon"]), lr=cfg.matrix_lr, momentum=cfg.muon_momentum,
                                  weight_decay=cfg.muon_weight_decay * (12 / model.cfg.n_layer) ** 2)
    opt = MuonAdamW(optimizers)
    if opt.self_synced_params and cfg.grad_clip:
        raise ValueError("grad_clip needs the averaged gradients, but distributed Muon averages its own inside step(); "
                         "set grad_clip=0 (the muon stage does: nanochat runs without clipping)")
    return with_schedule_bases(opt)


def muon_groups(model: torch.nn.Module, matrices: list[torch.Tensor]) -> list[dict]:
    """Muon's groups: one per shape of matrix, each updated as one stack. The fused q|k|v
    projections (c_attn, 3d x d) are handed over as three (d, d) matrices each, run 1's q, k and v."""
    qkv = {id(block.attn.c_attn.weight) for block in model.blocks}
    d = model.cfg.n_embd
    groups: dict[tuple, list[torch.Tensor]] = {}
    for p in matrices:
        matrix_shape = (d, d) if id(p) in qkv else tuple(p.shape)
        groups.setdefault((tuple(p.shape), matrix_shape), []).append(p)
    return [dict(params=ps, role="muon", matrix_shape=matrix_shape) for (_, matrix_shape), ps in groups.items()]


def with_schedule_bases(opt):
    """Record each group's peak rate and weight decay (``initial_lr``, ``initial_weight_decay``):
    ``schedules.apply_schedules`` scales them each step."""
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]
        group["initial_weight_decay"] = group["weight_decay"]
    return opt

