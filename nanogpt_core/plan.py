"""The dry-run planner: what a run will need and cost, before it touches a GPU.

The model is built on PyTorch's ``meta`` device (shapes, no storage), so the d24 speedrun
model can be planned on a laptop. From it:

    tokens   D = ratio * N_scaling                       (nanochat: ratio 12 for run 1)
    steps    S = floor(D / total_batch),  total_batch = micro_batch * seq_len * grad_accum * world
    compute  C = flops_per_token * S * total_batch
    time     C / (world * peak * MFU);   dollars = hours * world * price per GPU-hour

Memory per GPU (bytes; P = all parameters, fp32 master weights as nanochat keeps them):

    weights     4 P
    grads       4 P                         (full on every rank: all-reduced, not sharded)
    optimizer   (8 P_adam + 4 P_muon) / world   AdamW keeps m and v, Muon one momentum buffer;
                                            the speedrun shards both across the ranks
    activations B T L d * 30  +  B T V * 4  (bf16 under torch.compile, per micro-batch B x T)

The 30 bytes per token, layer and channel count what backward keeps of one block once
torch.compile has fused the elementwise ops: the fp32 residual input of each half (4 + 4),
q, k, v (6), q and k after RoPE and QK-norm (4), the attention output (2), the value
embedding (2), and the MLP's 4d-wide pre-activation (8). The head keeps fp32 logits (4 V per
token). It is an estimate; a real card adds the CUDA context, allocator slack and
temporaries of a few GB.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .config import stage_config
from .cost import PEAK_FLOPS
from .model import GPT

ACT_BYTES_PER_TOKEN_LAYER_CHANNEL = 30
LOGIT_BYTES_PER_TOKEN_VOCAB = 4
GPU_MEMORY_GB = {"h100": 80, "h200": 141, "a100": 80}
TOTAL_BATCH = 524_288  # tokens per optimizer step (nanochat run 1)
RATIO = 12  # training tokens per scaling parameter (nanochat run 1)


@dataclass
class Plan:
    scale: str
    stage: str
    gpu: str
    nodes: int
    gpus_per_node: int
    world_size: int
    params: dict
    flops_per_token: int
    ratio: float
    tokens: int
    total_batch: int
    micro_batch: int
    seq_len: int
    grad_accum: int
    steps: int
    memory_gb: dict
    gpu_memory_gb: float | None
    total_flops: float
    mfu: float
    hours: float
    price_per_gpu_hour: float
    dollars: float

    def to_dict(self) -> dict:
        return asdict(self)

    def report(self) -> str:
        p, m = self.params, self.memory_gb
        fits = "" if self.gpu_memory_gb is None else (
            f"  (of {self.gpu_memory_gb:g} GB: {'fits' if m['total'] <= self.gpu_memory_gb else 'DOES NOT FIT'})")
        return "\n".join([
            f"plan: stage {self.stage} at scale {self.scale} on {self.nodes} node(s) x {self.gpus_per_node} {self.gpu.upper()}"
            f" = {self.world_size} GPUs",
            f"parameters       {p['total']:>16,}  total",
            f"                 {p['embeddings']:>16,}  embedding tables (token {p['token_embedding']:,},"
            f" value {p['value_embeddings']:,}, position {p['position_embedding']:,})",
            f"                 {p['scaling']:>16,}  scaling (matrices, head, scalars)",
            f"FLOPs per token  {self.flops_per_token:>16.4e}  (6 x matmul weights + attention over each layer's window)",
            f"tokens           {self.tokens:>16,}  = {self.ratio:g} x scaling params, rounded down to whole steps",
            f"batch            {self.total_batch:>16,}  tokens/step = {self.micro_batch} x {self.seq_len}"
            f" x {self.world_size} GPUs x grad_accum {self.grad_accum}",
            f"steps            {self.steps:>16,}",
            f"memory per GPU   weights {m['weights']:.1f} GB + grads {m['grads']:.1f} GB + optimizer {m['optimizer']:.1f} GB"
            f" (sharded / {self.world_size}) + activations {m['activations']:.1f} GB = {m['total']:.1f} GB{fits}",
            f"compute          {self.total_flops:.3e} FLOPs",
            f"time             {self.hours:.2f} h at {self.mfu:.0%} MFU of {PEAK_FLOPS[self.gpu] / 1e12:g} TFLOP/s bf16 per GPU",
            f"cost             ${self.dollars:,.0f} at ${self.price_per_gpu_hour:g} per GPU-hour"
            f" (${self.price_per_gpu_hour * self.world_size:g} per hour for all {self.world_size})",
        ])


def meta_model(cfg) -> GPT:
    """The model of ``cfg`` on the meta device: every shape, no memory, no init cost."""
    with torch.device("meta"):
        return GPT(cfg.model)


def memory_per_gpu(model: GPT, micro_batch: int, world_size: int, optimizer: str = "muon") -> dict[str, float]:
    """The memory estimate of the module docstring, in GB (1e9 bytes). ``optimizer``: "muon" or "adamw"."""
    from .muon import route_parameters

    cfg = model.cfg
    total = model.num_params()["total"]
    muon = sum(p.numel() for _, p in route_parameters(model)["muon"]) if optimizer == "muon" else 0
    tokens = micro_batch * cfg.seq_len
    parts = {
        "weights": 4 * total,
        "grads": 4 * total,
        "optimizer": (8 * (total - muon) + 4 * muon) / world_size,
        "activations": tokens * (cfg.n_layer * cfg.n_embd * ACT_BYTES_PER_TOKEN_LAYER_CHANNEL
                                 + cfg.vocab_size * LOGIT_BYTES_PER_TOKEN_VOCAB),
    }
    parts["total"] = sum(parts.values())
    return {k: v / 1e9 for k, v in parts.items()}


def make_plan(scale: str = "speedrun", stage: str = "packing", gpus: int = 8, nodes: int = 1, gpu: str = "h100",
              mfu: float = 0.5, price: float = 3.0, ratio: float = RATIO, total_batch: int = TOTAL_BATCH,
              micro_batch: int | None = None, **overrides) -> Plan:
    """Plan a run of ``stage`` at ``scale`` on ``nodes`` x ``gpus`` GPUs of kind ``gpu``."""
    if gpu not in PEAK_FLOPS:
        raise ValueError(f"gpu={gpu!r} is unknown; choose one of {', '.join(PEAK_FLOPS)}")
    if gpus < 1 or nodes < 1 or not 0 < mfu <= 1 or price < 0:
        raise ValueError("need gpus >= 1, nodes >= 1, 0 < mfu <= 1 and price >= 0")
    cfg = stage_config(stage, scale, **overrides)
    B, T, world = micro_batch or cfg.train.batch_size, cfg.model.seq_len, gpus * nodes
    per_pass = B * T * world
    if total_batch % per_pass:
        raise ValueError(
            f"the total batch {total_batch:,} tokens is not a multiple of micro-batch {B} x seq {T} x {world} GPUs "
            f"= {per_pass:,}; change --gpus, --nodes or the micro-batch so that it divides"
        )
    model = meta_model(cfg)
    params = model.num_params()
    steps = int(ratio * params["scaling"]) // total_batch
    tokens = steps * total_batch
    fpt = model.flops_per_token()
    flops = float(fpt) * tokens
    hours = flops / (world * PEAK_FLOPS[gpu] * mfu) / 3600
    return Plan(
        scale=scale, stage=stage, gpu=gpu, nodes=nodes, gpus_per_node=gpus, world_size=world, params=params,
        flops_per_token=fpt, ratio=ratio, tokens=tokens, total_batch=total_batch, micro_batch=B, seq_len=T,
        grad_accum=total_batch // per_pass, steps=steps, memory_gb=memory_per_gpu(model, B, world, cfg.train.optimizer),
        gpu_memory_gb=GPU_MEMORY_GB.get(gpu), total_flops=flops, mfu=mfu, hours=hours,
        price_per_gpu_hour=price, dollars=hours * world * price,
    )
