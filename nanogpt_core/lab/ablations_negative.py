"""Negative results of the speedrun, re-run at toy scale: variants that did not make the recipe.

Each variant is a subclass of ``GPT`` (passed to ``train(..., model_cls=...)``), so the
ladder's model stays free of ideas that did not pay off.

SwiGLU at equal FLOPs (Shazeer 2020). ReLU^2 MLP: W_2 relu(W_1 x)^2 with W_1: d -> 4d, two
matrices, 8 d^2 weights. SwiGLU: W_2 (silu(W_g x) * (W_u x)) with three matrices of hidden
width h; equal weights (and FLOPs) need 3 d h = 8 d^2, i.e. h = 8d/3.

Half-truncated RoPE (modded-nanogpt): RoPE rotates the D/2 channel pairs of a head at
frequencies theta_i = base^(-2i/D). The truncated version keeps the fastest D/4 frequencies
and sets the slowest D/4 to zero, so half the channels carry no position at all (they
become position-free "semantic" channels).

    python -m nanogpt_core.lab.ablations_negative --steps 60 --seeds 0 1 --out book/results/negative_ablations.json
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig, stage_config
from ..model import GPT, rotary_tables
from .results import save_result


def swiglu_hidden(n_embd: int) -> int:
    """Hidden width h with 3 d h = 8 d^2 (rounded to a multiple of 8): SwiGLU at ReLU^2's weights and FLOPs."""
    return max(8, round(8 * n_embd / 3 / 8) * 8)


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
    """The ladder's model with every MLP replaced by SwiGLU of equal weight count."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        for block in self.blocks:
            block.mlp = SwiGLU(cfg)
        self.init_weights()


def truncated_rotary_tables(seq_len: int, head_dim: int, base: float = 10_000.0, keep: float = 0.5):
    """RoPE tables with only the fastest ``keep`` fraction of frequencies; the rest get angle 0 (cos 1, sin 0)."""
    cos, sin = rotary_tables(seq_len, head_dim, base)
    n_keep = round(keep * cos.size(1))
    cos[:, n_keep:], sin[:, n_keep:] = 1.0, 0.0
    return cos, sin


class HalfRopeGPT(GPT):
    """The ladder's model (pos_emb="rope") with half-truncated RoPE."""

    def __init__(self, cfg: ModelConfig):
        if cfg.pos_emb != "rope":
            raise ValueError("HalfRopeGPT needs pos_emb='rope' (stage modern-block or later)")
        super().__init__(cfg)
        cos, sin = truncated_rotary_tables(cfg.seq_len, cfg.head_dim, cfg.rope_base)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)


VARIANTS: dict[str, type[GPT]] = {"relu2 (the recipe)": GPT, "swiglu, equal FLOPs": SwiGLUGPT,
                                  "half-truncated rope": HalfRopeGPT}


def run_negative_ablations(steps: int = 60, seeds=(0,), stage: str = "value-embeddings", data=None,
                           variants: dict[str, type[GPT]] | None = None, **overrides) -> dict:
    """Train every variant on ``stage`` (eager fp32, no compile: the comparison is per step) for each seed."""
    from ..train import train

    variants = variants or VARIANTS
    runs = {}
    for name, cls in variants.items():
        runs[name] = []
        for seed in seeds:
            cfg = stage_config(stage, "toy", **{"steps": steps, "eval_every": max(1, steps // 5), "seed": seed,
                                                "compile": False, "bf16": False, **overrides})
            _, r = train(cfg, data, progress=False, model_cls=cls)
            runs[name].append(dict(seed=seed, final_val_bpb=r.final_val_bpb, val=r.val, losses=r.losses,
                                   params=r.params, flops_per_token=r.flops_per_token,
                                   tokens_per_second=r.tokens_per_second, hardware=r.hardware))
    summary = {name: dict(mean_bpb=statistics.mean(x["final_val_bpb"] for x in rs),
                          spread=(max(x["final_val_bpb"] for x in rs) - min(x["final_val_bpb"] for x in rs)),
                          scaling_params=rs[0]["params"]["scaling"], flops_per_token=rs[0]["flops_per_token"])
               for name, rs in runs.items()}
    first = next(iter(runs.values()))[0]
    return dict(stage=stage, steps=steps, hardware=first["hardware"], summary=summary, runs=runs)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--stage", default="value-embeddings")
    p.add_argument("--out", default=None, help="write the JSON here (with hardware and date)")
    args = p.parse_args(argv)
    result = run_negative_ablations(args.steps, tuple(args.seeds), args.stage)
    for name, s in result["summary"].items():
        print(f"{name:<22} val bpb {s['mean_bpb']:.4f} (spread {s['spread']:.4f}) "
              f"scaling params {s['scaling_params']:,} FLOPs/token {s['flops_per_token']:,}")
    save_result(result, args.out, "python -m nanogpt_core.lab.ablations_negative " + " ".join(argv or sys.argv[1:]), args.seeds)


if __name__ == "__main__":
    main()
