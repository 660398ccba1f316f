"""The lab: experiments that measure the speedrun and produce the book's figures.

Each module trains or times the core's code and writes its result through
``results.save_result`` (hardware, torch version, date, command, seeds) to ``book/results/``:

    baseline_stability  the 2019 recipe's loss spikes over peak learning rates and seeds (chapter 02)
    bench               tokens/s of the speed stages, attention backends, a step profile
    grading             the time to grade a class of 30 submissions per chapter
    scoreboard          every ladder stage at an equal wall-time budget against the gpt2 baseline
    ablation            the architecture switches of chapter 06, alone and together
    ablations_negative  what the speedrun tried and dropped (chapter 10)
    muon_sweep          Muon against AdamW over learning rates (chapter 05)
    bos_alignment       loss by position in the document: BOS-aligned rows vs the plain stream (chapter 07)
    packing             how each loader policy fills rows, steady state and drain, loader throughput (chapters 07-08)
    precision           native bf16 or not: matmul rates and stage step times (chapter 04)
    contention          a training step on a quiet CPU and on one shared with a CPU-bound process

The core never imports the lab; the package's CLI registers the lab's commands (``add_commands``).
"""

from __future__ import annotations

import argparse


def add_commands(sub) -> None:
    """Register the lab's subcommands on the package's CLI: speedrun (the toy scoreboard) and bench."""
    from ..config import SCALES

    p = sub.add_parser("speedrun", help="the scoreboard: every ladder stage on this machine vs the gpt2 baseline")
    p.add_argument("--scale", default="toy", choices=SCALES)
    p.add_argument("--seconds", type=float, default=300.0, help="training seconds per stage (equal wall-time budget)")
    p.add_argument("--stages", nargs="*", default=None, help="a subset of the ladder (default: every stage)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds; every stage runs with each (default: 0)")
    p.add_argument("--eval-tokens", type=int, default=16_384, help="val tokens per evaluation (about 20 per run)")
    p.add_argument("--cache", metavar="PATH", help="JSON-lines file of finished runs, reused on the next call")
    p.add_argument("--run-out", action="store_true",
                   help="run every stage to the end of its budget (default: a stage stops at the target)")
    p.add_argument("--out", default="speedrun_scoreboard", help="path prefix for the .json and .png")
    p.set_defaults(func=_speedrun)
    p = sub.add_parser("bench", help="tokens/s of the gpt2, flash-attention and compile stages, and the attention backends",
                       description="toy scale (default): the stages on this CPU, naive vs SDPA attention, the compiled "
                                   "crossover and a step profile. --scale gpu: the GPU check on one CUDA GPU: every "
                                   "attention backend against the naive reference, then the stages at gpu scale.")
    p.add_argument("--scale", choices=("toy", "gpu"), default="toy", help="toy (CPU) or gpu (one CUDA GPU)")
    p.add_argument("--steps", type=int, help="timed steps per variant and round (toy: 10, gpu: 100)")
    p.add_argument("--warmup", type=int, help="untimed steps first; the first one compiles (toy: 2, gpu: 5)")
    p.add_argument("--rounds", type=int, help="interleaved rounds; each variant reports its median (toy: 3, gpu: 1)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON (e.g. book/results/bench_toy.json)")
    p.set_defaults(func=_bench)


def _speedrun(a: argparse.Namespace) -> int:
    from ..config import STAGES, ConfigError
    from . import scoreboard

    for stage in a.stages or []:  # before the first stage trains, not after
        if stage not in STAGES:
            raise ConfigError(f"--stages {stage}: no such stage; choose from {', '.join(STAGES)}")
    if not a.seconds > 0:
        raise ConfigError(f"--seconds {a.seconds:g} must be > 0 (training seconds per stage)")
    return scoreboard.main_cli(a)


def _bench(a: argparse.Namespace) -> int:
    from ..config import ConfigError
    from . import bench

    given = {k: v for k, v in (("steps", a.steps), ("warmup", a.warmup), ("rounds", a.rounds)) if v is not None}
    for name, value in given.items():  # what is not given keeps the function's default
        if value < 1:
            why = ": the first step compiles and is never timed" if name == "warmup" else ""
            raise ConfigError(f"--{name}={value} must be at least 1{why}")
    (bench.run_gpu_bench if a.scale == "gpu" else bench.run_bench)(json_path=a.json, **given)
    return 0
