"""Negative results of the speedrun, re-run at toy scale as their authors tried them.

Each variant is a subclass of ``GPT`` (passed to ``train(..., model_cls=...)``), so the
ladder's model stays free of ideas that did not pay off.

SwiGLU at equal FLOPs, as nanochat tried it (dev/LOG.md, 2026-02-05, "SwiGLU Activation
(Negative Result)", tested at d12 and d24: "Worse on all measures"). ReLU^2 MLP:
W_2 relu(W_1 x)^2 with W_1: d -> 4d, two matrices, 8 d^2 weights. SwiGLU:
W_2 (silu(W_g x) * (W_u x)) with three matrices of hidden width h; equal weights (and FLOPs)
need 3 d h = 8 d^2, i.e. h = 8d/3, which nanochat rounds down: ``(8 * n_embd) // 3``.

Half-truncated RoPE, as modded-nanogpt adopted it in record 17 (2024-12-17, "improve rotary
embeddings", records/track_1_short/2024-12-17_SparsifyEmbeds) and nanochat tried it (dev/LOG.md,
2026-01-16, "Half-truncated RoPE | No improvement | ... (base 1024, linspace)"). Of a head's
D/2 channel pairs, the first D/4 rotate at frequencies spaced evenly in the exponent from 1 down
to 1/1024 radians per token,

    theta_i = 1024^(-i / (D/4 - 1)),   i = 0, ..., D/4 - 1   ((1/1024) ** linspace(0, 1, D/4)),

and the last D/4 get frequency 0: they are never rotated, so half the channels of q and k carry
no position at all. (Plain RoPE: theta_i = 10000^(-2i/D) over all D/2 pairs.)

The protocol: the stage ``value-embeddings`` (the whole architecture, Muon, the plain stream
loader) at toy scale, eager (no torch.compile: the same math, and compiling each run would eat
the budget), bf16 autocast where the CPU computes it natively (the stage's ``bf16="auto"``), the
toy preset's batch of 16 rows of 256 tokens, the muon stage's schedule (constant LR, then a linear
warmdown to 0 over the last 40% of the steps) ending at the last step. Each variant differs from
the recipe in its MLP or its RoPE table and nothing else. Every seed trains all three (same seed:
same data order; the half-RoPE model also draws the same initial weights as the recipe). The runs
are interleaved (seed by seed), so the three see the same machine load. The figure is the final
val bits per byte (the same val tokens for every run) and its paired difference to the recipe,
seed by seed; a difference whose seed-to-seed range contains zero is noise
(``results.paired_difference``).

    python -m nanogpt_core.lab.ablations_negative --out book/results/ablations_negative.json
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig, stage_config
from ..model import GPT
from .results import paired_difference, save_result, spread


def swiglu_hidden(n_embd: int) -> int:
    """nanochat's hidden width, ``(8 * n_embd) // 3``: three d x h matrices hold ReLU^2's 8 d^2 weights (rounded down)."""
    return (8 * n_embd) // 3


class SwiGLU(nn.Module):
    """W_2 (silu(W_g x) * (W_u x)); W_g and W_u stacked in one matrix c_fc (d -> 2h)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = swiglu_hidden(cfg.n_embd)
        self.c_fc = nn.Linear(cfg.n_embd, 2 * h, bias=cfg.bias)
        self.c_proj = nn.Linear(h, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.c_fc(x).chunk(2, dim=-1)
        return self.c_proj(F.silu(gate) * up)


class SwiGLUGPT(GPT):
    """The ladder's model with every MLP replaced by SwiGLU of (about) equal weight count."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        for block in self.blocks:
            block.mlp = SwiGLU(cfg)
        self.init_weights()


def half_truncated_rotary_tables(seq_len: int, head_dim: int, base: float = 1024.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (seq_len, head_dim/2) of half-truncated RoPE: D/4 frequencies (1/base)**linspace(0, 1, D/4),
    then D/4 zeros (angle 0: cos 1, sin 0, those channel pairs are not rotated)."""
    if head_dim % 4:
        raise ValueError(f"half-truncated RoPE needs head_dim divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    inv_freq = (1 / base) ** torch.linspace(0.0, 1.0, quarter, dtype=torch.float32)
    inv_freq = torch.cat([inv_freq, torch.zeros(quarter)])
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


class HalfRopeGPT(GPT):
    """The ladder's model (pos_emb="rope") with modded-nanogpt's half-truncated RoPE tables."""

    def __init__(self, cfg: ModelConfig):
        if cfg.pos_emb != "rope":
            raise ValueError("HalfRopeGPT needs pos_emb='rope' (stage modern-block or later)")
        super().__init__(cfg)
        cos, sin = half_truncated_rotary_tables(cfg.seq_len, cfg.head_dim)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)


RECIPE = "relu2 + rope (the recipe)"
VARIANTS: dict[str, type[GPT]] = {RECIPE: GPT, "swiglu, equal FLOPs": SwiGLUGPT, "half-truncated rope": HalfRopeGPT}
SOURCES = {
    RECIPE: "the ladder's model at this stage",
    "swiglu, equal FLOPs": "nanochat dev/LOG.md 2026-02-05: hidden (8 n_embd) // 3, three matrices; "
                           "'Worse on all measures' at d12 and d24",
    "half-truncated rope": "modded-nanogpt record 17 (2024-12-17): (1/1024)**linspace(0, 1, D/4), then D/4 zeros; "
                           "nanochat dev/LOG.md 2026-01-16: 'No improvement'",
}
# The committed experiment (book/results/ablations_negative.json): the stage's config with these changes
PROTOCOL = dict(steps=80, batch_size=16, compile=False, eval_every=20, eval_tokens=16_384)


def run_negative_ablations(steps: int = PROTOCOL["steps"], seeds=(0, 1, 2), stage: str = "value-embeddings", data=None,
                           variants: dict[str, type[GPT]] | None = None, **overrides) -> dict:
    """Train every variant on ``stage`` for each seed, interleaved seed by seed (see the module docstring).

    The first variant is the baseline; every other one gets its paired difference to it.
    ``overrides`` change the config of every run (the defaults are ``PROTOCOL``'s).
    """
    from ..train import train

    variants = variants or VARIANTS
    overrides = {**{k: v for k, v in PROTOCOL.items() if k != "steps"}, **overrides}
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for seed in seeds:  # interleaved: the variants of one seed run back to back, under the same load
        for name, cls in variants.items():
            cfg = stage_config(stage, "toy", **{**overrides, "steps": steps, "seed": seed})
            _, r = train(cfg, data, progress=False, model_cls=cls)
            runs[name].append(dict(seed=seed, final_val_bpb=r.final_val_bpb, val=r.val, losses=r.losses,
                                   params=r.params, flops_per_token=r.flops_per_token, precision=r.precision,
                                   tokens_per_second=r.tokens_per_second, hardware=r.hardware))
    baseline = next(iter(variants))
    base_bpb = [x["final_val_bpb"] for x in runs[baseline]]
    summary = {}
    for name, rs in runs.items():
        bpb = [x["final_val_bpb"] for x in rs]
        summary[name] = dict(bpb=spread(bpb), tokens_per_second=spread([x["tokens_per_second"] for x in rs]),
                             scaling_params=rs[0]["params"]["scaling"], flops_per_token=rs[0]["flops_per_token"],
                             source=SOURCES.get(name, ""))
        if name != baseline:
            d = paired_difference(base_bpb, bpb)
            d["verdict"] = {"b lower": "variant lower", "b higher": "variant higher"}.get(d["verdict"], d["verdict"])
            summary[name]["difference"] = d  # variant - baseline, seed by seed
    first = runs[baseline][0]
    cfg = stage_config(stage, "toy", **{**overrides, "steps": steps})
    return dict(stage=stage, steps=steps, baseline=baseline, overrides=overrides, config=cfg.to_dict(),
                precision=first["precision"], hardware=first["hardware"], summary=summary, runs=runs)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=PROTOCOL["steps"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--stage", default="value-embeddings")
    p.add_argument("--out", default=None, help="write the JSON here (with hardware and date)")
    args = p.parse_args(argv)
    result = run_negative_ablations(args.steps, tuple(args.seeds), args.stage)
    for name, s in result["summary"].items():
        b, d = s["bpb"], s.get("difference")
        line = f"{name:<26} val bpb {b['mean']:.4f} ± {b['std']:.4f} (n={b['n']})"
        if d:
            line += f"   vs recipe {d['mean']:+.4f} (seeds {d['min']:+.4f} .. {d['max']:+.4f}): {d['verdict']}"
        print(line)
    save_result(result, args.out, "python -m nanogpt_core.lab.ablations_negative " + " ".join(argv or sys.argv[1:]),
                args.seeds)


if __name__ == "__main__":
    main()
