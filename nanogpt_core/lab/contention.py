"""Contention lab: a training step on a quiet CPU and on one shared with a CPU-bound process.

    python -m nanogpt_core.lab.contention --json book/results/contention.json [--competitor torch]

A reader's laptop runs a browser next to the chapters; a grader runs several submissions at
once. This times a few toy training steps compiled in bf16 (the `compile` stage where bf16 is
native) and eager in fp32 (the `gpt2` stage), on a quiet machine and beside one competing
process, under two OpenMP waiting policies. Each measurement runs in its own process, so its
environment applies from the start (libgomp reads it when PyTorch loads).

Why a busy machine hurts: PyTorch's CPU kernels run in OpenMP parallel regions, and a compiled
graph is many small regions (one per fused Inductor kernel), each ending at a barrier. By
default a thread that reaches a barrier first *spins* (libgomp: GOMP_SPINCOUNT = 300,000 turns)
before it sleeps. With a thread per core and another process on one of the cores, the thread
that everyone waits for is descheduled while its partner burns the core it needs. With
``OMP_WAIT_POLICY=PASSIVE`` a waiting thread sleeps at once and yields the core. The CLI sets it
(unless set) and the grader gives each sandbox its CPUs with OMP_NUM_THREADS to match.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = {  # name: (stage, overrides)
    "compiled bf16": ("compile", {"bf16": "on"}),
    "eager fp32": ("gpt2", {"bf16": "off", "compile": False}),
    "muon compiled bf16": ("muon", {"bf16": "on"}),  # chapter 05's training cell
    "muon eager fp32": ("muon", {"bf16": "off", "compile": False}),
}


def _worker(stage: str, overrides: dict, steps: int) -> dict:
    from .bench import stage_step_time

    return stage_step_time(stage, steps, **{"device": "cpu", **overrides})


COMPETITORS = {
    "python": "while True: pass",  # one core, busy
    # another PyTorch job: small matmuls on every core, its OpenMP threads spinning between them (default policy)
    "torch": "import torch\na = torch.randn(256, 256)\nwhile True: a @ a",
}


def _spin(kind: str = "python") -> subprocess.Popen:
    """One CPU-bound competitor (see COMPETITORS), in an environment without this run's OpenMP settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    return subprocess.Popen([sys.executable, "-c", COMPETITORS[kind]], env=env)


def _environ(changes: dict) -> dict:
    """os.environ with ``changes`` applied (a value of None removes the variable)."""
    env = dict(os.environ)
    for key, value in changes.items():
        env.pop(key, None) if value is None else env.__setitem__(key, value)
    return env


def measure(variant: str, competitors: int, steps: int, env: dict | None = None, timeout: float = 1800,
            kind: str = "python") -> dict:
    """Time ``variant`` in a fresh process with ``competitors`` busy processes of ``kind`` beside it."""
    stage, overrides = VARIANTS[variant]
    spinners = [_spin(kind) for _ in range(competitors)]
    try:
        time.sleep(0.5 * bool(spinners))
        proc = subprocess.run([sys.executable, "-m", "nanogpt_core.lab.contention", "_worker", stage,
                               json.dumps(overrides), str(steps)], capture_output=True, text=True, timeout=timeout,
                              env=_environ({**(env or {}), "SPEEDRUN_PROGRESS": "off"}))
    finally:
        for s in spinners:
            s.kill()
            s.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} with {competitors} competitor(s) failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


POLICIES = {"spin (OpenMP default)": {"OMP_WAIT_POLICY": None}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}


def run(steps: int = 6, env: dict | None = None, json_path: str | None = None, command: str = "",
        kind: str = "python", variants=("compiled bf16", "eager fp32")) -> dict:
    from ..hardware import cpu_threads
    from .results import save_result

    rows = []
    for policy, policy_env in POLICIES.items():
        for variant in variants:
            for competitors in (0, 1):
                r = measure(variant, competitors, steps, {**policy_env, **(env or {})}, kind=kind)
                rows.append({"policy": policy, "variant": variant, "competitors": competitors, **r})
                load = "quiet" if not competitors else f"+{competitors} {kind} process"
                print(f"{policy:<22} {variant:<19} {load:<18} {r['step_s']:7.3f} s/step  "
                      f"({r['tokens_per_second']:7,.0f} tok/s, {r['threads']} threads)", flush=True)
    result = {"steps": steps, "competitor": COMPETITORS[kind], "env": env or {}, "cpus_available": cpu_threads(),
              "rows": rows}
    return save_result(result, json_path, command or "python -m nanogpt_core.lab.contention")


def main(argv=None) -> int:
    if argv is None and sys.argv[1:2] == ["_worker"]:
        _, _, stage, overrides, steps = sys.argv
        print(json.dumps(_worker(stage, json.loads(overrides), int(steps))))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6, help="training steps per variant (the first two are not timed)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment for every variant")
    p.add_argument("--competitor", choices=COMPETITORS, default="python",
                   help="python: a busy loop on one core; torch: another PyTorch job on every core")
    p.add_argument("--variants", nargs="*", default=["compiled bf16", "eager fp32"], choices=VARIANTS)
    p.add_argument("--json", metavar="PATH", help="write the result here (e.g. book/results/contention.json)")
    a = p.parse_args(argv)
    env = dict(item.split("=", 1) for item in a.env)
    run(a.steps, env, a.json, "python -m nanogpt_core.lab.contention " + " ".join(sys.argv[1:]), a.competitor,
        a.variants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
