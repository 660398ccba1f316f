"""The dry-run planner: what a run will need and cost, before it touches a GPU.

The model is built on PyTorch's ``meta`` device (shapes, no storage), so the d24 speedrun
model can be planned on a laptop. From it:

    tokens   D = ratio * N_scaling                       (nanochat: ratio 12 for run 1)
    steps    S = floor(D / total_batch),  total_batch = micro_batch * seq_len * grad_accum * world
    compute  C = flops_per_token * S * total_batch
    time     C / (world * peak * MFU);   dollars = hours * world * price per GPU-hour
    eval     (S // eval_every + 1) evaluations x eval_tokens tokens x flops_per_token / 3 (forward
             only), split across the processes as run 1 splits them; reported beside the training
             time, not in the dollars (nanochat's leaderboard counts the training steps)

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

import dataclasses
import math
from dataclasses import asdict, dataclass

import torch

from .config import ConfigError, stage_config
from .cost import PEAK_FLOPS
from .model import GPT

ACT_BYTES_PER_TOKEN_LAYER_CHANNEL = 30
LOGIT_BYTES_PER_TOKEN_VOCAB = 4
GPU_MEMORY_GB = {"h100": 80, "h200": 141, "a100": 80, "rtx4090": 24}
MEMORY_HEADROOM_GB = 4  # CUDA context, allocator slack, temporaries: kept free when choosing a micro-batch
TOTAL_BATCH = 524_288  # tokens per optimizer step (nanochat run 1)
RATIO = 12  # training tokens per scaling parameter (nanochat run 1)

# The data a run reads. nanochat's runs/speedrun.sh at commit 348fbb3 sizes its download with these:
# "each data shard is ~250M chars", "~100MB of text (compressed)", "Assume our tokenizer is 4.8
# chars/token", and "the new DataLoader wastes about 35% of tokens to cropping", so it downloads
# 240 / (1 - 0.35) = 370 shards (`python -m nanochat.dataset -n 370`); the last one is the val split.
CHARS_PER_SHARD = 250e6
SHARD_GB = 0.1
CHARS_PER_TOKEN = 4.8
RUN1_SHARDS = 370
SHARD_MARGIN = 0.1  # download 10% more train shards than computed (nanochat rounded 216 up to 240)
# Fraction of document tokens each loader discards (nanochat dev/LOG.md, 2026-01-13, FineWeb-edu, T = 2048:
# greedy crop 39.4%, BestFit-Crop 34.6%, "about 35%" in runs/speedrun.sh). The plain stream discards none.
CROP_FRACTION = {"stream": 0.0, "bos": 0.394, "bestfit": 0.35}
CROP_SOURCE = {"stream": "the plain token stream discards none",
               "bos": "greedy crop, nanochat dev/LOG.md 2026-01-13, at T=2048",
               "bestfit": "BestFit-Crop, nanochat runs/speedrun.sh @348fbb3 and dev/LOG.md 2026-01-13, at T=2048"}


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
    eval_flops: float = 0.0  # every validation pass of the run together (forward only)
    eval_hours: float = 0.0  # at the same MFU, all processes evaluating their share
    # the data: documents read (tokens / (1 - crop)), shards of them, what to download
    crop_fraction: float = 0.0
    crop_source: str = ""
    doc_tokens: int = 0
    train_shards: int = 0  # train shards the documents fill (at CHARS_PER_TOKEN, CHARS_PER_SHARD)
    shards: int = 0  # shards to download: train shards + margin + the val shard (speedrun: at least run 1's 370)
    val_shard: str = ""
    disk_gb: float = 0.0
    micro_batch_note: str = ""

    def train_flags(self) -> str:
        """The command that runs this plan: the launcher, then the `train` flags (data paths as in the README).

        On several nodes, the same command runs on every node: torchrun's c10d rendezvous at the
        first node's address (HEAD_NODE_ADDR) gathers them and numbers the processes.
        """
        if self.nodes > 1:
            launch = (f"torchrun --nnodes={self.nodes} --nproc_per_node={self.gpus_per_node} --rdzv_backend=c10d"
                      " --rdzv_endpoint=$HEAD_NODE_ADDR:29500 --rdzv_id=speedrun \\\n    -m nanogpt_core train")
        elif self.world_size > 1:
            launch = f"torchrun --standalone --nproc_per_node={self.gpus_per_node} -m nanogpt_core train"
        else:
            launch = "python -m nanogpt_core train"
        flags = "" if self.scale == "toy" else "--data data/fineweb --tokenizer data/tok.json "
        flags += f"--batch-size {self.micro_batch} --grad-accum {self.grad_accum} --steps {self.steps}"
        return f"{launch} --stage {self.stage} --scale {self.scale} \\\n    {flags}"

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
            f" x {self.world_size} GPUs x grad_accum {self.grad_accum}" + self.micro_batch_note,
            f"steps            {self.steps:>16,}",
            f"memory per GPU   weights {m['weights']:.1f} GB + grads {m['grads']:.1f} GB + optimizer {m['optimizer']:.1f} GB"
            f" (sharded / {self.world_size}) + activations {m['activations']:.1f} GB = {m['total']:.1f} GB{fits}",
            f"compute          {self.total_flops:.3e} FLOPs",
            f"time             {self.hours:.2f} h predicted at an assumed {self.mfu:.0%} MFU of"
            f" {PEAK_FLOPS[self.gpu] / 1e12:g} TFLOP/s bf16 per GPU",
            "                 (run 1 measured ~50%: 4.33e19 FLOPs in 10,949 s on 8 H100, nanochat dev/LEADERBOARD.md)",
            f"cost             ${self.dollars:,.{0 if self.dollars >= 10 else 2}f} at ${self.price_per_gpu_hour:g} per GPU-hour"
            f" (${self.price_per_gpu_hour * self.world_size:g} per hour for all {self.world_size}): the training steps only,",
            "                 as nanochat's leaderboard counts; evaluation, tokenizer training and the download come on top",
            f"evaluation       {self.eval_flops:.3e} FLOPs, ~{self.eval_hours * 60:.0f} min more at the same MFU"
            f" ({self.eval_hours / self.hours:.1%} of the training time; each GPU evaluates its share of the val rows)",
            f"data             {self.doc_tokens:,} tokens of documents, of which the loader discards ~{self.crop_fraction:.0%}",
            f"                 ({self.crop_source})",
            f"                 = {self.doc_tokens * CHARS_PER_TOKEN / 1e9:,.1f}B characters at ~{CHARS_PER_TOKEN:g}"
            f" characters/token = {self.train_shards} train shards of ~{CHARS_PER_SHARD / 1e6:g}M characters",
            f"download         {self.shards} shards (~{self.disk_gb:,.0f} GB): python -m nanogpt_core download --shards"
            f" {self.shards} --dir data/fineweb",
            f"                 val: {self.val_shard}, the last one"
            + (f" (run 1's: runs/speedrun.sh @348fbb3 downloads {RUN1_SHARDS})" if self.scale == "speedrun"
               else f" ({self.train_shards} train shards + {SHARD_MARGIN:.0%} + the val shard)"),
            "train with       " + self.train_flags().replace("\n", "\n                 "),
        ])


def meta_model(cfg) -> GPT:
    """The model of ``cfg`` on the meta device: every shape, no memory, no init cost.

    A fused-attention config is built with SDPA named outright: shapes and FLOPs are the same,
    and the planner does not report the attention kernel of the machine it happens to run on.
    """
    model_cfg = cfg.model
    if model_cfg.attn_backend in ("auto", "fa3"):
        model_cfg = dataclasses.replace(model_cfg, attn_backend="sdpa")
    with torch.device("meta"):
        return GPT(model_cfg)


def memory_per_gpu(model: GPT, micro_batch: int, world_size: int, optimizer: str = "muon") -> dict[str, float]:
    """The memory estimate of the module docstring, in GB (1e9 bytes). ``optimizer``: "muon" or "adamw"."""
    from .optim import route_parameters

    cfg = model.cfg
    total = model.num_params()["total"]
    muon = sum(p.numel() for p in route_parameters(model)["muon"]) if optimizer == "muon" else 0
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
        raise ConfigError(f"gpu={gpu!r} is unknown; choose one of {', '.join(PEAK_FLOPS)}")
    for name, value, ok, need in (("gpus", gpus, gpus >= 1, "at least 1 (GPUs per node)"),
                                  ("nodes", nodes, nodes >= 1, "at least 1"),
                                  ("mfu", mfu, 0 < mfu <= 1, "in (0, 1]: a fraction of peak, e.g. 0.4"),
                                  ("price", price, price >= 0, ">= 0 (dollars per GPU-hour)"),
                                  ("ratio", ratio, ratio > 0, "> 0 (tokens per scaling parameter)"),
                                  ("total_batch", total_batch, total_batch >= 1, "at least 1 token")):
        if not ok:
            raise ConfigError(f"{name}={value!r} must be {need}")
    cfg = stage_config(stage, scale, **overrides)
    model = meta_model(cfg)
    T, world, card_gb = cfg.model.seq_len, gpus * nodes, GPU_MEMORY_GB.get(gpu)
    B, note = micro_batch or cfg.train.batch_size, ""
    if micro_batch is None and card_gb is not None:  # the preset's micro-batch, halved until it fits the card
        B = fitting_micro_batch(model, B, world, card_gb, cfg.train.optimizer)
        if B != cfg.train.batch_size:
            note = f" (the preset's {cfg.train.batch_size} rows do not fit {card_gb} GB: {B} do, with {MEMORY_HEADROOM_GB} GB spare)"
    per_pass = B * T * world
    if total_batch % per_pass:
        raise ValueError(
            f"the total batch {total_batch:,} tokens is not a multiple of micro-batch {B} x seq {T} x {world} GPUs "
            f"= {per_pass:,}; change --gpus, --nodes or the micro-batch so that it divides"
        )
    params = model.num_params()
    steps = int(ratio * params["scaling"]) // total_batch
    tokens = steps * total_batch
    fpt = model.flops_per_token()
    flops = float(fpt) * tokens
    hours = flops / (world * PEAK_FLOPS[gpu] * mfu) / 3600
    t = cfg.train
    evals = (steps // t.eval_every if t.eval_every else 0) + 1  # at 0, every eval_every steps, and the last
    eval_flops = evals * (t.eval_tokens // per_pass) * per_pass * fpt / 3  # whole batches of every process, forward only
    data = data_needs(tokens, cfg.train.loader, scale)
    return Plan(
        scale=scale, stage=stage, gpu=gpu, nodes=nodes, gpus_per_node=gpus, world_size=world, params=params,
        flops_per_token=fpt, ratio=ratio, tokens=tokens, total_batch=total_batch, micro_batch=B, seq_len=T,
        grad_accum=total_batch // per_pass, steps=steps, memory_gb=memory_per_gpu(model, B, world, cfg.train.optimizer),
        gpu_memory_gb=card_gb, total_flops=flops, mfu=mfu, hours=hours,
        price_per_gpu_hour=price, dollars=hours * world * price, micro_batch_note=note,
        eval_flops=eval_flops, eval_hours=eval_flops / (world * PEAK_FLOPS[gpu] * mfu) / 3600, **data,
    )


def fitting_micro_batch(model: GPT, start: int, world_size: int, card_gb: float, optimizer: str = "muon") -> int:
    """``start`` rows, halved until the memory estimate plus MEMORY_HEADROOM_GB fits ``card_gb`` (at least 1)."""
    B = start
    while B > 1 and memory_per_gpu(model, B, world_size, optimizer)["total"] + MEMORY_HEADROOM_GB > card_gb:
        B //= 2
    return B


def data_needs(tokens: int, loader: str, scale: str) -> dict:
    """What training on ``tokens`` reads with ``loader``: documents, shards, the download, the val shard.

        documents   D_doc = D / (1 - crop)                  crop: the loader's discarded fraction
        shards      ceil(D_doc * chars_per_token / chars_per_shard)
        download    ceil(1.1 * shards) + 1 (the val shard, last); at speedrun scale at least run 1's 370
    """
    from .download import MAX_SHARD, shard_name

    crop = CROP_FRACTION[loader]
    doc_tokens = math.ceil(tokens / (1 - crop))
    train_shards = math.ceil(doc_tokens * CHARS_PER_TOKEN / CHARS_PER_SHARD)
    shards = math.ceil(train_shards * (1 + SHARD_MARGIN)) + 1
    if scale == "speedrun":
        shards = max(shards, RUN1_SHARDS)
    shards = min(shards, MAX_SHARD + 1)
    return dict(crop_fraction=crop, crop_source=CROP_SOURCE[loader], doc_tokens=doc_tokens, train_shards=train_shards,
                shards=shards, val_shard=shard_name(shards - 1), disk_gb=shards * SHARD_GB)
