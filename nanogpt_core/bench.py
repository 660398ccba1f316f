"""Speed measurements for the `flash-attention` and `compile` stages (``python -m nanogpt_core bench``).

Two measurements, both run on the machine at hand:
- ``stage_speeds``: trains each variant through ``train.train`` (the loop the chapters use)
  for ``warmup + steps`` steps and reports tokens/s over the steps after the warm-up, with the
  first step's time (compilation) reported apart.
- ``attention_scaling``: naive vs SDPA attention, forward + backward time and the activation
  memory each keeps for the backward pass, for growing sequence length T.

Speed claims belong here, not in tests: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import time
from pathlib import Path

import torch

from .attention import naive_attention, sdpa_attention
from .config import stage_config

# name -> (stage, overrides). The middle four separate what compile and bf16 each give.
VARIANTS: dict[str, tuple[str, dict]] = {
    "gpt2": ("gpt2", {}),
    "flash-attention": ("flash-attention", {}),
    "flash-attention + bf16": ("flash-attention", {"bf16": True}),
    "flash-attention + compile": ("flash-attention", {"compile": True}),
    "compile": ("compile", {}),  # = flash-attention + compile + bf16
}


def stage_speeds(
    variants: dict[str, tuple[str, dict]] | None = None, steps: int = 20, warmup: int = 3, scale: str = "toy",
    data=None, progress: bool = False, **overrides,
) -> list[dict]:
    """Train each variant ``warmup + steps`` steps; tokens/s over the last ``steps`` steps."""
    from .data import toy_data
    from .train import train

    variants = variants or VARIANTS
    rows = []
    for name, (stage, switches) in variants.items():
        cfg = stage_config(stage, scale, steps=warmup + steps, eval_every=0, **{**switches, **overrides})
        cfg = cfg.replace(eval_tokens=cfg.train.batch_size * cfg.model.seq_len)  # one val batch: speed only
        data = data or toy_data(cfg.model.vocab_size)
        _, r = train(cfg, data, progress=progress)
        timed = r.step_seconds[warmup:]
        tokens_per_step = r.tokens // r.steps
        rows.append({
            "variant": name, "stage": stage, "overrides": switches,
            "attn_backend": cfg.model.attn_backend, "compile": cfg.train.compile, "bf16": cfg.train.bf16,
            "tokens_per_second": tokens_per_step * len(timed) / sum(timed),
            "first_step_seconds": r.step_seconds[0],
            "warmup_seconds": sum(r.step_seconds[:warmup]),
            "steps": r.steps, "warmup": warmup, "losses": r.losses,
        })
        print(f"{name:<28} {rows[-1]['tokens_per_second']:>9,.0f} tok/s   first step {r.step_seconds[0]:6.1f} s",
              flush=True)
    return rows


def _saved_bytes(fn, *args) -> tuple[torch.Tensor, int]:
    """Run ``fn`` and count the bytes of the tensors autograd keeps for the backward pass."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    inputs = {(a.untyped_storage().data_ptr(), a.dtype) for a in args if isinstance(a, torch.Tensor)}
    return out, sum(n for key, n in seen.items() if key not in inputs)


def attention_scaling(
    seq_lens=(64, 128, 256, 512, 1024), batch: int = 1, heads: int = 4, head_dim: int = 64, repeats: int = 3,
    window: int | None = None,
) -> list[dict]:
    """Naive vs SDPA attention for growing T: forward + backward seconds (median of ``repeats``)
    and the activation bytes saved for backward beyond q, k, v (naive keeps the T x T softmax)."""
    rows = []
    for T in seq_lens:
        g = torch.Generator().manual_seed(T)
        q, k, v = (torch.randn(batch, heads, T, head_dim, generator=g).requires_grad_() for _ in range(3))
        row = {"T": T}
        for name, fn in (("naive", naive_attention), ("sdpa", sdpa_attention)):
            times = []
            for _ in range(repeats + 1):  # the first run warms up
                t0 = time.perf_counter()
                out, saved = _saved_bytes(fn, q, k, v, window)
                out.sum().backward()
                times.append(time.perf_counter() - t0)
                q.grad = k.grad = v.grad = None
            row[f"{name}_seconds"] = statistics.median(times[1:])
            row[f"{name}_saved_bytes"] = saved
        row["score_matrix_bytes"] = batch * heads * T * T * 4  # one fp32 T x T matrix per head
        rows.append(row)
    return rows


def run_bench(steps: int = 20, warmup: int = 3, json_path: str | None = None) -> dict:
    """The whole benchmark: stage speeds, ratios, attention scaling; printed, and saved if asked."""
    from .train import describe_hardware, pick_device

    load_before = os.getloadavg()[0]  # other processes on the machine slow every figure down
    print(f"# stage speeds at toy scale ({warmup} warm-up steps excluded, then {steps} timed steps)")
    runs = stage_speeds(steps=steps, warmup=warmup)
    tps = {r["variant"]: r["tokens_per_second"] for r in runs}
    ratios = {
        "flash-attention / gpt2": tps["flash-attention"] / tps["gpt2"],
        "compile / flash-attention": tps["compile"] / tps["flash-attention"],
        "compile / gpt2": tps["compile"] / tps["gpt2"],
    }
    for k, v in ratios.items():
        print(f"{k:<28} {v:5.2f}x")
    print("# attention: naive vs SDPA, forward + backward, B=1, H=4, D=64")
    attn = attention_scaling()
    for r in attn:
        print(f"T={r['T']:>5}  naive {1e3 * r['naive_seconds']:7.1f} ms {r['naive_saved_bytes'] / 2**20:7.1f} MiB   "
              f"sdpa {1e3 * r['sdpa_seconds']:7.1f} ms {r['sdpa_saved_bytes'] / 2**20:7.2f} MiB")
    result = {
        "command": "python -m nanogpt_core bench" + (f" --json {json_path}" if json_path else ""),
        "hardware": describe_hardware(pick_device("auto")),
        "torch_version": str(torch.__version__),
        "date": datetime.date.today().isoformat(),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # 1-min load, start and end
        "cpu_count": os.cpu_count(),
        "runs": runs, "ratios": ratios, "attention": attn,
    }
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=1))
        print(f"saved to {json_path}")
    return result
