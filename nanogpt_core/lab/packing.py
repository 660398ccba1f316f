"""The packing lab: how the loader policies fill rows, in steady state and at a stream's end, and how fast they are.

``python -m nanogpt_core.lab.packing [--json PATH]`` packs two document-length distributions with
every policy: the toy corpus at T = 256 (20 epochs, each a fresh shuffle) and FineWeb-like
synthetic lengths at T = 2048 (300,000 documents), and times the loaders' ``next_batch``.

A finite stream packed to its end has three phases, and the crop fraction differs in each:

    warm-up       BestFit-Crop's buffer starts with a sample of the stream and holds back the
                  documents that never fit a row (longer than T + 1); they are not cropped yet
    steady state  the buffer's make-up has settled (or drifts slowly): what a long training
                  run sees, batch after batch
    drain         the stream has run out and the buffer is emptied: every document held back is
                  cropped now. Training never gets here: a run ends long before its stream does
                  (a finite corpus starts a new epoch instead)

``crop_windows`` measures the crop fraction per window of rows before the drain, and over the
drain apart; ``steady_state`` packs a stream and reports the phases. The old headline figure
(``compare_policies``, packed to the end) mixes all three.

The training side (loss, tokens/s of BestFit-Crop against greedy crop at equal steps, 3 seeds)
is the ``bestfit`` arm of ``python -m nanogpt_core.lab.bos_alignment``, run with chapter 7's arms
in one sitting.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence

import numpy as np
import torch

from ..loaders import POLICIES, Doc, DocumentLoader, PackingStats
from ..packing_sim import pack_to_the_end, simulate_packing
from .results import save_result, spread


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


def crop_windows(rows: Sequence[Sequence[tuple[int, int]]], window: int, drain_start: int) -> tuple[list[float], float]:
    """Crop fraction per window of ``window`` rows before the drain, and over the drain apart.

    ``rows[r]`` lists row r's pieces as (document length, tokens taken); rows ``drain_start`` and
    later were filled after the stream ran out. For a set of rows, cropped fraction =
    (sum of lengths - sum taken) / sum of lengths. Only complete windows of rows before
    ``drain_start`` count; the drain's fraction is 0.0 when it has no rows.
    """
    def cropped(rs) -> float:
        stats = PackingStats()
        for row in rs:
            stats.add_row([(Doc(0, length), take) for length, take in row], 0, 1)
        return stats.crop_fraction

    windows = [cropped(rows[end - window : end]) for end in range(window, drain_start + 1, window)]
    return windows, cropped(rows[drain_start:])


def steady_state(lengths: Sequence[int], seq_len: int, policy: str = "bestfit", buffer_size: int = 1000,
                 window: int = 1000) -> dict:
    """The crop fraction of a stream packed to its end, phase by phase.

    ``windows``: per window of rows before the drain, the documents used so far, the window's
    crop fraction and the buffer's share of documents longer than a row. ``steady``: the spread
    of the window fractions over the second half of the stream (before the drain). ``drain``: the
    crop fraction of the drain rows and their share of all cropped tokens. ``to_the_end``: the
    figure of the whole run, all phases mixed (what ``compare_policies`` reports).
    """
    run = pack_to_the_end(lengths, seq_len, policy, buffer_size)
    rows, drain_start = run["rows"], run["drain_start"]
    fractions, drain = crop_windows(rows, window, drain_start)
    windows = [{"docs_used": run["docs_used"][(i + 1) * window - 1], "crop_fraction": f,
                "long_share": run["long_share"][(i + 1) * window - 1]} for i, f in enumerate(fractions)]
    half = len(lengths) / 2
    late = [w["crop_fraction"] for w in windows if w["docs_used"] >= half] or fractions[-1:]

    def tokens(rs):
        return sum(n for row in rs for n, _ in row), sum(t for row in rs for _, t in row)

    total, placed = tokens(rows)
    drain_total, drain_placed = tokens(rows[drain_start:])
    return {"policy": policy, "seq_len": seq_len, "buffer_size": buffer_size, "window_rows": window,
            "documents": len(lengths), "rows": len(rows), "windows": windows, "steady": spread(late),
            "first_window": fractions[0] if fractions else None,
            "drain": {"rows": len(rows) - drain_start, "crop_fraction": drain,
                      "share_of_cropped": (drain_total - drain_placed) / max(1, total - placed)},
            "to_the_end": (total - placed) / total}


def toy_epochs(lengths: Sequence[int], epochs: int, seed: int = 0) -> list[int]:
    """``epochs`` passes over ``lengths``, each a fresh shuffle (as the loader reads a finite corpus)."""
    rng, out = random.Random(seed), []
    for _ in range(epochs):
        shuffled = list(lengths)
        rng.shuffle(shuffled)
        out += shuffled
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
    toy_stream = toy_epochs([len(d) for d in toy], 20)
    web_stream = fineweb_like_lengths(300_000, seed=1)
    result = {
        "toy": {"seq_len": 256, "documents": len(toy), "mean_length": sum(map(len, toy)) / len(toy),
                "policies": compare_policies([len(d) for d in toy], 256)},
        "steady_state": {
            "toy": {"epochs": 20, **{p: steady_state(toy_stream, 256, p, window=1000) for p in ("greedy_crop", "bestfit")}},
            "fineweb_like": {"documents": len(web_stream), "seed": 1,
                             **{p: steady_state(web_stream, 2048, p, window=2000) for p in ("greedy_crop", "bestfit")}},
        },
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
    for name, phases in r["steady_state"].items():
        print(f"\nsteady state, {name}: crop fraction per window of rows, second half of the stream (mean ± std over windows)")
        for p in ("greedy_crop", "bestfit"):
            ss = phases[p]
            print(f"  {p:11s} first window {ss['first_window']:6.1%}  steady {ss['steady']['mean']:6.1%} ± {ss['steady']['std']:.1%}"
                  f"  drain {ss['drain']['crop_fraction']:6.1%} ({ss['drain']['rows']} rows, "
                  f"{ss['drain']['share_of_cropped']:.1%} of all cropped tokens)  packed to the end {ss['to_the_end']:6.1%}")
    step = r["toy_step_seconds"]
    print(f"\nthroughput (toy training step: {step * 1e3:.0f} ms for 16 x 256 tokens)")
    for b in r["throughput"]:
        print(f"  {b['corpus']:12s} T={b['seq_len']:5d} {b['policy']:11s} {b['seconds_per_batch'] * 1e3:6.2f} ms/batch "
              f"({b['seconds_per_batch'] / step:6.2%} of a toy step)  {b['docs_per_s']:9,.0f} docs/s  {b['tokens_per_s']:11,.0f} tokens/s")


if __name__ == "__main__":
    main()
