"""Speed measurements for the `flash-attention` and `compile` stages (``python -m nanogpt_core bench``).

At toy scale (``run_bench``, on a CPU), on the machine at hand:
- ``stage_speeds``: trains each variant through ``train.train`` (the loop the chapters use)
  for ``warmup + steps`` steps and reports tokens/s over the steps after the warm-up, with the
  first step's time (compilation) reported apart; the variants take turns over a few rounds
  (A B C, A B C, A B C) and each reports its median round and the mean ± std over rounds,
  because a shared machine's speed drifts by ~15% over minutes. Every ratio between two
  variants is also taken round by round (the two ran a minute apart), with its mean ± std.
- ``attention_scaling``: naive vs SDPA attention, forward + backward time and the activation
  memory each keeps for the backward pass, for growing sequence length T.
- and the evidence behind the CPU's compiled attention rule and the 2x ceiling: the
  formula-vs-kernel crossover, a profiled step, the CPU's matmul rate.

On one CUDA GPU (``run_gpu_bench``, ``bench --scale gpu``, driven by scripts/gpu_check.sh):
``attention_backends`` times every backend that can run (naive, SDPA, FA3) against the fp32
formula, with its error, and ``stage_speeds`` runs the stages at `gpu` scale.

Speed claims belong here, not in tests: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import os
import statistics
import time

import torch
import torch.utils.benchmark as benchmark

from ..attention import fa3_attention, load_fa3, naive_attention, sdpa_attention
from ..config import stage_config
from .results import save_result, spread

# name -> (stage, overrides). The middle four separate what compile and bf16 each give.
VARIANTS: dict[str, tuple[str, dict]] = {
    "gpt2": ("gpt2", {}),
    "flash-attention": ("flash-attention", {}),
    "flash-attention + bf16": ("flash-attention", {"bf16": "on"}),
    "flash-attention + compile": ("flash-attention", {"compile": True}),
    # compile + bf16 with PyTorch's fused kernel forced inside the graph, to show what the
    # stage's "auto" choice on a CPU (the formula, compiled: attention.formula_compiles_faster) buys
    "compile, fused SDPA kept": ("compile", {"attn_backend": "sdpa"}),
    "compile": ("compile", {}),  # = flash-attention + compile + bf16
}
# On a GPU "auto" never swaps in the formula, so the fused-SDPA-kept row would repeat the
# compile row; fp32 compile is left out to keep the check inside a short device lease.
GPU_VARIANTS = {k: VARIANTS[k] for k in ("gpt2", "flash-attention", "flash-attention + bf16", "compile")}


def stage_step_time(stage: str, steps: int = 6, scale: str = "toy", **overrides) -> dict:
    """Train ``stage`` for ``steps`` steps (no evaluation) and time it: the median step, the first two
    steps (compilation, warm-up) excluded, with the precision and thread count it ran with."""
    from ..train import train

    cfg = stage_config(stage, scale, **{"steps": steps, "eval_every": 0, "eval_tokens": 4096, **overrides})
    _, r = train(cfg, progress=False)
    timed = r.step_seconds[2:]
    step = statistics.median(timed)
    return {"stage": stage, "precision": r.precision, "threads": torch.get_num_threads(), "step_s": step,
            "steps_s": timed, "first_step_s": r.compile_seconds,
            "tokens_per_second": cfg.train.batch_size * cfg.model.seq_len / step}


def stage_speeds(
    variants: dict[str, tuple[str, dict]] | None = None, steps: int = 10, warmup: int = 2, rounds: int = 3,
    scale: str = "toy", data=None, progress: bool = False, **overrides,
) -> list[dict]:
    """Train each variant ``warmup + steps`` steps, ``rounds`` times; tokens/s over the timed steps.

    The rounds interleave the variants (A B C, A B C, ...) and each variant reports its median
    round (``tokens_per_second``) and the spread over rounds (``spread``: mean, std, min, max), so
    a slow minute on a shared machine lands on every variant instead of on one ratio.
    """
    from ..data import toy_data
    from ..train import train

    variants = variants or VARIANTS
    rows = {}
    for round_ in range(rounds):
        for name, (stage, switches) in variants.items():
            cfg = stage_config(stage, scale, steps=warmup + steps, eval_every=0, **{**switches, **overrides})
            cfg = cfg.replace(eval_tokens=cfg.train.batch_size * cfg.model.seq_len)  # one val batch: speed only
            data = data or toy_data(cfg.model.vocab_size)
            _, r = train(cfg, data, progress=progress)
            timed = r.step_seconds[warmup:]
            tps = (r.tokens // r.steps) * len(timed) / sum(timed)
            row = rows.setdefault(name, {
                "variant": name, "stage": stage, "overrides": switches,
                "attn_backend": cfg.model.attn_backend, "compile": cfg.train.compile, "bf16": cfg.train.bf16,
                "first_step_seconds": r.step_seconds[0],  # the first round's: compilation with a cold cache
                "steps": r.steps, "warmup": warmup, "losses": r.losses, "rounds": [],
            })
            row["rounds"].append(tps)
            row["tokens_per_second"] = statistics.median(row["rounds"])
            row["spread"] = spread(row["rounds"])  # mean, std, min, max over the rounds so far
            print(f"round {round_ + 1}/{rounds}  {name:<28} {tps:>9,.0f} tok/s   first step {r.step_seconds[0]:6.1f} s",
                  flush=True)
    return list(rows.values())


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time of one call of ``fn()`` over ``repeats`` timed calls, after ``warmup`` untimed ones.

    ``torch.utils.benchmark.Timer`` does the timing: it keeps torch's thread count, and where a
    CUDA GPU is present it synchronizes around each call (kernels run asynchronously, and the
    clock would otherwise stop when they are queued, not done).
    """
    for _ in range(warmup):
        fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return statistics.median(timer.timeit(1).median for _ in range(repeats))


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
            def forward_backward(fn=fn, name=name):
                q.grad = k.grad = v.grad = None
                out, row[f"{name}_saved_bytes"] = _saved_bytes(fn, q, k, v, window)
                out.sum().backward()

            row[f"{name}_seconds"] = median_seconds(forward_backward, repeats)
        row["score_matrix_bytes"] = batch * heads * T * T * 4  # one fp32 T x T matrix per head
        rows.append(row)
    return rows


def compiled_attention_crossover(
    seq_lens=(256, 512, 1024), tokens: int = 4096, heads: int = 4, head_dim: int = 64, repeats: int = 5,
) -> list[dict]:
    """Inside a compiled bf16 graph: the formula (fused by Inductor) vs PyTorch's fused kernel.

    Forward + backward milliseconds (median of ``repeats``) at ``tokens`` tokens per batch, for
    a full causal window and a half-row window; the evidence behind
    ``attention.COMPILED_FORMULA_MAX_T``.
    """
    rows = []
    for T in seq_lens:
        for window in (T // 2, None):
            row = {"T": T, "window": window if window is not None else T}
            for name, fn in (("formula", naive_attention), ("sdpa", sdpa_attention)):
                torch._dynamo.reset()
                compiled = torch.compile(lambda q, k, v, fn=fn, w=window: fn(q, k, v, w), dynamic=False)
                g = torch.Generator().manual_seed(T)
                q, k, v = (torch.randn(tokens // T, heads, T, head_dim, generator=g).requires_grad_() for _ in range(3))
                def forward_backward(compiled=compiled, q=q, k=k, v=v):
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        y = compiled(q, k, v)
                    y.float().sum().backward()

                # two warm-up calls: compilation, then the first real run
                row[f"{name}_ms"] = 1e3 * median_seconds(forward_backward, repeats, warmup=2)
            row["formula_speedup"] = row["sdpa_ms"] / row["formula_ms"]
            rows.append(row)
    return rows


def attention_backends(
    cases=((1024, None), (1024, 256), (2048, None), (2048, 512)), batch: int = 4, heads: int = 6,
    head_dim: int = 128, dtype: torch.dtype = torch.bfloat16, repeats: int = 10, device: str | torch.device = "cuda",
) -> list[dict]:
    """Every backend that can run here against the naive fp32 reference, per (T, window) case.

    For each backend, in ``dtype``: forward + backward milliseconds (median of ``repeats``) and
    the largest absolute error of the output and of the three input gradients, against the
    formula in fp32 with the same inputs and the same upstream gradient. FA3 is included when
    ``attention.load_fa3`` finds it; otherwise the row says why not.
    """
    device = torch.device(device)
    backends = {"naive": naive_attention, "sdpa": sdpa_attention}
    fa3, fa3_reason = load_fa3()
    if fa3 is not None and device.type == "cuda":
        backends["fa3"] = fa3_attention
    rows = []
    for T, window in cases:
        g = torch.Generator().manual_seed(T)
        q, k, v = (torch.randn(batch, heads, T, head_dim, generator=g).to(device) for _ in range(3))
        upstream = torch.randn(batch, heads, T, head_dim, generator=g).to(device)
        ref = [t.clone().requires_grad_() for t in (q, k, v)]
        y_ref = naive_attention(*ref, window)
        y_ref.backward(upstream)
        row = {"T": T, "window": window if window is not None else T, "fa3": fa3_reason or "available"}
        for name, fn in backends.items():
            inputs = [t.to(dtype).requires_grad_() for t in (q, k, v)]

            def forward_backward(fn=fn, inputs=inputs):
                for t in inputs:
                    t.grad = None
                y = fn(*inputs, window)
                y.backward(upstream.to(dtype))
                return y

            y = forward_backward()
            row[f"{name}_output_error"] = (y.float() - y_ref).abs().max().item()
            row[f"{name}_grad_error"] = max((t.grad.float() - r.grad).abs().max().item() for t, r in zip(inputs, ref))
            row[f"{name}_ms"] = 1e3 * median_seconds(forward_backward, repeats)
        rows.append(row)
    return rows


# How step_profile sorts the profiler's operators (by self CPU time) into a few named kinds.
OP_KINDS = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul")),
    ("fused attention kernel", ("scaled_dot_product",)),
    ("Inductor's fused kernels", ("CompiledFxGraph",)),
    ("optimizer", ("adam",)),
)


def op_kind(name: str) -> str:
    """The kind of a profiler operator name; everything unlisted is "other ops"."""
    return next((kind for kind, keys in OP_KINDS if any(key.lower() in name.lower() for key in keys)), "other ops")


def step_profile(stage: str, steps: int = 3, warmup: int = 3, scale: str = "toy", **overrides) -> dict:
    """Milliseconds per training step by kind of work (``OP_KINDS``), from ``torch.profiler``.

    The model, optimizer and autocast are built as ``train.train`` builds them; the batch is
    fixed random tokens. In a compiled step the elementwise work runs inside Inductor's kernels,
    so it appears as "Inductor's fused kernels"; in an eager step it is spread over "other ops".
    """
    from torch.profiler import ProfilerActivity, profile

    from ..compile import compile_model
    from ..model import GPT
    from ..optim import build_optimizer
    from ..hardware import autocast_for, use_bf16
    from ..train import train_step

    cfg = stage_config(stage, scale, **overrides)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    optimizer = build_optimizer(model, cfg.train)
    fwd = compile_model(model) if cfg.train.compile else model
    autocast = autocast_for(torch.device("cpu"), use_bf16(cfg.train.bf16, torch.device("cpu")))
    shape = (cfg.train.batch_size, cfg.model.seq_len)
    x, y = (torch.randint(0, cfg.model.vocab_size, shape, generator=torch.Generator().manual_seed(i)) for i in (1, 2))

    def one_step() -> None:
        train_step(fwd, model, optimizer, [(x, y)], 0, cfg.train, autocast)

    for _ in range(warmup):
        one_step()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            one_step()
    wall_ms = 1e3 * (time.perf_counter() - t0) / steps
    kinds: dict[str, float] = {kind: 0.0 for kind, _ in OP_KINDS} | {"other ops": 0.0}
    for event in prof.key_averages():
        kinds[op_kind(event.key)] += event.self_cpu_time_total / 1e3 / steps
    return {"stage": stage, "overrides": overrides, "ms_per_step": kinds, "wall_ms_per_step": wall_ms}


def matmul_gflops(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of one large (n x n) @ (n x n) matmul in fp32 and bf16: what this CPU's matmul
    library reaches at best, to compare a training step's matmul time against."""
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        g = torch.Generator().manual_seed(0)
        a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
        rates[name] = 2 * n**3 / median_seconds(lambda a=a, b=b: a @ b, repeats) / 1e9
    return rates


def run_bench(steps: int = 10, warmup: int = 2, json_path: str | None = None, rounds: int = 3) -> dict:
    """The whole benchmark: stage speeds, ratios, attention scaling; printed, and saved if asked."""

    load_before = os.getloadavg()[0]  # other processes on the machine slow every figure down
    print(f"# stage speeds at toy scale ({warmup} warm-up steps excluded, then {steps} timed steps; "
          f"{rounds} interleaved rounds, mean ± std over rounds)")
    runs = stage_speeds(steps=steps, warmup=warmup, rounds=rounds)
    for r in runs:
        sp = r["spread"]
        print(f"{r['variant']:<28} {sp['mean']:>9,.0f} ± {sp['std']:,.0f} tok/s   (rounds: "
              + ", ".join(f"{x:,.0f}" for x in r["rounds"]) + ")")
    by_name = {r["variant"]: r["rounds"] for r in runs}
    tps = {r["variant"]: r["tokens_per_second"] for r in runs}
    pairs = {
        "flash-attention / gpt2": ("flash-attention", "gpt2"),
        "flash-attention + bf16 / flash-attention": ("flash-attention + bf16", "flash-attention"),
        "flash-attention + compile / flash-attention": ("flash-attention + compile", "flash-attention"),
        "compile / flash-attention": ("compile", "flash-attention"),
        "compile / gpt2": ("compile", "gpt2"),
        "compile / compile with fused SDPA": ("compile", "compile, fused SDPA kept"),
    }
    ratios = {name: tps[a] / tps[b] for name, (a, b) in pairs.items()}  # of the median rounds
    each_round = {name: [x / y for x, y in zip(by_name[a], by_name[b])] for name, (a, b) in pairs.items()}
    ratio_spread = {name: spread(v) for name, v in each_round.items()}
    for name, sp in ratio_spread.items():
        print(f"{name:<44} {sp['mean']:5.2f}x ± {sp['std']:.2f}   (rounds: "
              + ", ".join(f"{x:.2f}x" for x in each_round[name]) + ")")
    print("# attention: naive vs SDPA, forward + backward, B=1, H=4, D=64")
    attn = attention_scaling()
    for r in attn:
        print(f"T={r['T']:>5}  naive {1e3 * r['naive_seconds']:7.1f} ms {r['naive_saved_bytes'] / 2**20:7.1f} MiB   "
              f"sdpa {1e3 * r['sdpa_seconds']:7.1f} ms {r['sdpa_saved_bytes'] / 2**20:7.2f} MiB")
    print("# attention inside a compiled bf16 graph: the formula vs the fused kernel, 4096 tokens, H=4, D=64")
    crossover = compiled_attention_crossover()
    for r in crossover:
        print(f"T={r['T']:>5} window {r['window']:>5}  formula {r['formula_ms']:6.1f} ms   sdpa {r['sdpa_ms']:6.1f} ms"
              f"   formula {r['formula_speedup']:4.2f}x")
    peak = matmul_gflops()
    print(f"# one 2048^3 matmul: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    print("# where a toy step's time goes (torch.profiler, self CPU time, ms per step)")
    profiles = [step_profile("gpt2"), step_profile("compile", attn_backend="sdpa"), step_profile("compile")]
    for p in profiles:
        name = p["stage"] + (" (fused SDPA kept)" if p["overrides"] else "")
        print(f"{name:<28} " + "  ".join(f"{k} {v:.0f}" for k, v in p["ms_per_step"].items())
              + f"   wall {p['wall_ms_per_step']:.0f}")
    result = {
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # 1-min load, start and end
        "cpu_count": os.cpu_count(),
        "rounds": rounds, "runs": runs, "ratios": ratios, "ratios_each_round": each_round, "ratio_spread": ratio_spread,
        "attention": attn, "attention_compiled_bf16": crossover,
        "step_profiles": profiles, "matmul_gflops": peak,
    }
    return _saved(result, json_path, "python -m nanogpt_core bench" + (f" --json {json_path}" if json_path else ""))


def _saved(result: dict, json_path: str | None, command: str) -> dict:
    """``result`` with its provenance, written to ``json_path`` as JSON when a path is given."""
    result = save_result(result, json_path, command)
    if json_path:
        print(f"saved to {json_path}")
    return result


def run_gpu_bench(steps: int = 100, warmup: int = 5, json_path: str | None = None, rounds: int = 1) -> dict:
    """The GPU check (``bench --scale gpu``): attention backends on CUDA, then the stages at `gpu` scale.

    The stages train on the toy corpus (Shakespeare) with a 32,768-token BPE, so the check needs
    no download; the figures are tokens/s and the losses at equal steps, not a FineWeb result.
    """

    if not torch.cuda.is_available():
        raise NotImplementedError(
            "`bench --scale gpu` checks the CUDA paths and needs a CUDA GPU, and none is visible; "
            "on a CPU run `python -m nanogpt_core bench` (toy scale)"
        )
    device = torch.device("cuda")
    hardware = {
        "gpu": torch.cuda.get_device_name(device),
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
        "memory_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1),
        "torch_version": str(torch.__version__), "cuda_version": torch.version.cuda,
        "fa3": load_fa3()[1] or "available",
    }
    print("# " + ", ".join(f"{k} {v}" for k, v in hardware.items()))
    print("# attention backends vs the naive fp32 reference (bf16, forward + backward, B=4, H=6, D=128)")
    attn = attention_backends(device=device)
    for r in attn:
        print(f"T={r['T']:>5} window {r['window']:>5}  " + "   ".join(
            f"{b} {r[f'{b}_ms']:6.2f} ms (out err {r[f'{b}_output_error']:.1e}, grad err {r[f'{b}_grad_error']:.1e})"
            for b in ("naive", "sdpa", "fa3") if f"{b}_ms" in r))
    print(f"# stages at gpu scale on the toy corpus ({warmup} warm-up steps excluded, then {steps} timed steps)")
    runs = stage_speeds(GPU_VARIANTS, steps=steps, warmup=warmup, rounds=rounds, scale="gpu")
    tps = {r["variant"]: r["tokens_per_second"] for r in runs}
    ratios = {f"{name} / gpt2": tps[name] / tps["gpt2"] for name in tps if name != "gpt2"}
    final_loss = {r["variant"]: r["losses"][-1] for r in runs}  # equal steps, equal data: within noise
    for r in runs:
        print(f"{r['variant']:<28} {r['tokens_per_second']:>11,.0f} tok/s   first step {r['first_step_seconds']:6.1f} s"
              f"   loss at step {r['steps']} {final_loss[r['variant']]:.3f}")
    for k, v in ratios.items():
        print(f"{k:<34} {v:6.2f}x")
    result = {
        "gpu": hardware,
        "data": "toy corpus (Shakespeare), BPE with the gpu scale's 32,768-token vocabulary",
        "runs": runs, "ratios": ratios, "final_loss": final_loss, "attention_backends": attn,
    }
    return _saved(result, json_path, f"python -m nanogpt_core bench --scale gpu --steps {steps}"
                  + (f" --json {json_path}" if json_path else ""))
