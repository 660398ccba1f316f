"""The packing lab: how the loader policies fill rows, and how fast the loaders are.

``python -m nanogpt_core.lab.packing [--json PATH]`` packs the toy corpus (T = 256) and
FineWeb-like synthetic lengths (T = 2048) with every policy, and times ``next_batch``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np
import torch

from ..loaders import POLICIES, DocumentLoader, simulate_packing
from .results import save_result

def fineweb_like_lengths(n: int, seed: int = 0, mean: float = 1000.0, sigma: float = 1.1) -> list[int]:
    """Synthetic document lengths (tokens) with a web-like long tail: lognormal with the given mean.

    The defaults put 22.7% of the tokens beyond a 2049-token row, close to the 22.9% floor that
    nanochat measured on FineWeb-edu; the real length distribution itself is not public here.

    A lognormal with log-std ``sigma`` has mean exp(mu + sigma^2 / 2), so mu = ln(mean) - sigma^2 / 2.
    """
    g = torch.Generator().manual_seed(seed)
    mu = math.log(mean) - sigma**2 / 2
    lengths = torch.empty(n).log_normal_(mu, sigma, generator=g)
    return [max(2, int(v)) for v in lengths.tolist()]


def compare_policies(lengths: Sequence[int], seq_len: int, buffer_size: int = 1000) -> dict[str, dict]:
    """Pack the same documents with every policy: {policy: stats summary}, plus the cropping floor.

    Runs until the documents run out, so the figures are steady-state, not a warm-up.
    ``floor`` is the fraction of tokens beyond ``seq_len + 1`` in documents longer than a row:
    no policy that starts every document at the beginning of a row can keep them.
    """
    out = {p: simulate_packing(lengths, seq_len, p, buffer_size)[0].summary() for p in POLICIES}
    out["floor"] = sum(max(0, n - seq_len - 1) for n in lengths) / sum(lengths)
    return out


def benchmark(policy: str = "bestfit", docs=None, seq_len: int = 256, batch_size: int = 16, batches: int = 50,
              buffer_size: int = 1000) -> dict:
    """Time ``next_batch`` of a DocumentLoader: seconds per batch, documents/s and tokens/s."""
    loader = DocumentLoader(docs, batch_size, seq_len, policy, buffer_size)
    loader.next_batch()  # fill the buffer outside the timing
    used0, placed0 = loader.stats.docs_used, loader.stats.placed
    t0 = time.perf_counter()
    for _ in range(batches):
        loader.next_batch()
    dt = time.perf_counter() - t0
    return {"policy": policy, "seq_len": seq_len, "batch_size": batch_size, "buffer_size": buffer_size,
            "seconds_per_batch": dt / batches, "docs_per_s": (loader.stats.docs_used - used0) / dt,
            "tokens_per_s": (loader.stats.placed - placed0) / dt}


def toy_step_seconds(steps: int = 3) -> float:
    """Seconds per training step of the toy gpt2 stage (16 x 256 tokens), forward + backward + AdamW."""
    from ..config import stage_config
    from ..model import GPT
    from ..optim import build_optimizer

    cfg = stage_config("gpt2", "toy")
    torch.manual_seed(0)
    model = GPT(cfg.model)
    opt = build_optimizer(model, cfg.train)
    x = torch.randint(0, cfg.model.vocab_size, (cfg.train.batch_size, cfg.model.seq_len))
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        model(x, x).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


def run_benchmark(json_path: str | None = None) -> dict:
    """Packing statistics (toy corpus at T=256, FineWeb-like lengths at T=2048) and loader throughput."""
    from ..data import toy_data

    toy = toy_data().train_docs
    web_lengths = fineweb_like_lengths(100_000)
    web = [np.zeros(n, dtype=np.int64) for n in web_lengths[:20_000]]  # token values do not matter for speed
    result = {
        "toy": {"seq_len": 256, "documents": len(toy), "mean_length": sum(map(len, toy)) / len(toy),
                "policies": compare_policies([len(d) for d in toy], 256)},
        "fineweb_like": {"seq_len": 2048, "documents": len(web_lengths), "mean_length": sum(web_lengths) / len(web_lengths),
                         "lognormal": {"mean": 1000.0, "sigma": 1.1}, "policies": compare_policies(web_lengths, 2048)},
        "throughput": [benchmark(p, toy, 256, 16, 50) | {"corpus": "toy"} for p in POLICIES]
        + [benchmark(p, web, 2048, 16, 20) | {"corpus": "fineweb_like"} for p in POLICIES],
        "toy_step_seconds": toy_step_seconds(),
    }
    return save_result(result, json_path, "python -m nanogpt_core.lab.packing", device="cpu")


def main(argv: list[str] | None = None) -> None:
    """``python -m nanogpt_core.lab.packing [--json PATH]``: packing statistics and throughput."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m nanogpt_core.lab.packing", description=main.__doc__)
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    r = run_benchmark(parser.parse_args(argv).json)
    print(f"hardware: {r['hardware']}, {r['date']}")
    for name in ("toy", "fineweb_like"):
        c = r[name]
        print(f"\n{name}: {c['documents']} documents, mean {c['mean_length']:.0f} tokens, rows of T+1 = {c['seq_len'] + 1}; "
              f"cropping floor {c['policies']['floor']:.1%}")
        for p in POLICIES:
            s = c["policies"][p]
            print(f"  {p:11s} utilization {s['utilization']:6.1%}  cropped {s['crop_fraction']:6.1%}  padding {s['pad_fraction']:6.1%}")
    step = r["toy_step_seconds"]
    print(f"\nthroughput (toy training step: {step * 1e3:.0f} ms for 16 x 256 tokens)")
    for b in r["throughput"]:
        print(f"  {b['corpus']:12s} T={b['seq_len']:5d} {b['policy']:11s} {b['seconds_per_batch'] * 1e3:6.2f} ms/batch "
              f"({b['seconds_per_batch'] / step:6.2%} of a toy step)  {b['docs_per_s']:9,.0f} docs/s  {b['tokens_per_s']:11,.0f} tokens/s")


if __name__ == "__main__":
    main()
