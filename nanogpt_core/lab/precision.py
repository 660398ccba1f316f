"""Precision lab: does this CPU compute bf16 natively, and what does each stage's step cost here?

    python -m nanogpt_core.lab.precision --json book/results/precision_native.json
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python -m nanogpt_core.lab.precision \
        --json book/results/precision_avx2.json     # the same CPU, seen as an AVX2-only one

It measures one large matmul in fp32 and in bf16 (GFLOP/s), records the CPU's extensions and
``hardware.use_bf16``'s decision for ``bf16="auto"``, and times a few toy training steps of
several stages as the ladder runs them here (the `compile` stage and later in bf16 only where
it is native). The two environment variables cap oneDNN and ATen at AVX2, which is what an
AVX2-only laptop or CI host gives PyTorch; the figures of such a run are labelled with it.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from ..hardware import cpu_features, native_bf16
from .bench import matmul_gflops, stage_step_time
from .results import save_result

TIMED_STAGES = ("gpt2", "compile", "muon", "packing")


def stage_step_times(stages=TIMED_STAGES, steps: int = 6, **overrides) -> dict[str, dict]:
    """Median step time (first two steps excluded: compilation, warm-up) of each stage at toy scale."""
    rows = {}
    for stage in stages:
        t = stage_step_time(stage, steps, **overrides)
        rows[stage] = {"precision": t["precision"], "step_ms": 1e3 * t["step_s"], "first_step_s": t["first_step_s"],
                       "tokens_per_second": t["tokens_per_second"]}
        print(f"{stage:<10} {t['precision']:<14} {rows[stage]['step_ms']:7.0f} ms/step  "
              f"{t['tokens_per_second']:7,.0f} tok/s  first step {t['first_step_s']:5.1f} s", flush=True)
    return rows


def run_precision(json_path: str | None = None, steps: int = 6, n: int = 1024) -> dict:
    cpu = torch.device("cpu")
    native, why = native_bf16(cpu)
    rates = matmul_gflops(n, repeats=3)
    cap = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if k in os.environ}
    print(f"CPU extensions: {', '.join(cpu_features()) or 'none'}{f' (capped: {cap})' if cap else ''}")
    print(f"{n}^3 matmul: fp32 {rates['fp32']:.1f} GFLOP/s, bf16 {rates['bf16']:.1f} GFLOP/s; bf16 auto -> "
          f"{'bf16' if native else 'fp32'} ({why})")
    result = {"cpu_features": list(cpu_features()), "capped_by": cap, "native_bf16": native, "why": why,
              "matmul_n": n, "matmul_gflops": rates, "steps": steps, "stages": stage_step_times(steps=steps)}
    env = " ".join(f"{k}={v}" for k, v in cap.items())
    command = f"{env + ' ' if env else ''}python -m nanogpt_core.lab.precision " + " ".join(sys.argv[1:])
    return save_result(result, json_path, command.strip(), device="cpu")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m nanogpt_core.lab.precision", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6, help="training steps per stage (the first two are not timed)")
    p.add_argument("--json", metavar="PATH", help="write the figures here, with the hardware and date")
    args = p.parse_args(argv)
    run_precision(args.json, args.steps)


if __name__ == "__main__":
    main()
