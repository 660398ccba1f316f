"""Chapter 7's experiment: what BOS-aligned rows buy, measured where they should help.

The claim to test: a model trained on rows that start at a document's BOS predicts the first
tokens of a document better, when the document is seen as at inference (a prompt starts with
BOS at position 0 and has nothing before it), than a model trained on rows cut out of one
long token stream, where most rows start mid-document.

Arms, each one stage of the ladder, at the toy scale's size and batch (16 rows of 256):

    stream   stage ``value-embeddings``: ``data.TokenStreamLoader``, rows of T + 1 tokens at
             random offsets of the concatenated training documents (the 2019 loader)
    bos      stage ``bos-loader``: ``loaders.DocumentLoader`` with the ``greedy_crop`` policy,
             every row built from whole documents in a seeded random order, each starting at
             its BOS; the document that does not fit is cropped and its tail discarded
    bestfit  stage ``packing``: the same loader with the ``bestfit`` policy (BestFit-Crop), chapter
             8's comparison with ``bos`` at equal steps (its loss, tokens/s and crop fraction)

Everything else is the same config (model, Muon + AdamW, schedule, steps, seed). What differs
besides the alignment, because the loaders differ (the chapter lists it):

- the bos arm discards the cropped tails (about 29% of the document tokens it reads), so more
  of its training tokens sit near a document's start, and fewer far from it;
- the stream arm samples rows with replacement at random offsets; the bos arm reads a seeded
  permutation of the documents without replacement;
- in the stream arm, the text before a document's BOS is the previous piece of the same play
  (the corpus is concatenated in order); in the bos arm it is a random other document.

Per seed, both arms start from the same initial weights (the seed sets the init and the loader).
After training, each run is measured on the held-out val documents (two whole plays), every
document alone in its own row from its BOS at position 0 (cropped to T + 1 tokens; nothing is
packed after it), which is how a prompt is seen at inference:

    first_k   mean loss (nats per token) on each document's first k tokens after the BOS
    rest      mean loss on its tokens k + 1 .. T
    first_k_minus_rest   how much harder a document's first k tokens are than the rest; an arm
              that helps exactly the predictions near a document's start lowers it
    curve     mean loss per bucket of position within the document (1, 2-3, 4-7, ..., 128-256)

plus the val bits per byte that ``train`` reports: run 1's validation, BestFit-Crop rows of the
val documents, each row starting at a BOS (the same rows for every arm, whatever its training rows
look like), the training tokens/s, and the share of
document tokens the run's loader cropped. Differences are taken between neighbouring arms (bos
minus stream, bestfit minus bos), paired by seed; ``results.paired_difference`` calls one noise
when its seed spread contains 0.

Protocol: all runs in one sitting, interleaved by seed (every arm of seed 0, then seed 1, ...),
``torch.compile`` off (compiling would cost more than the runs), on a quiet machine.

    python -m nanogpt_core.lab.bos_alignment --steps 50 --seeds 0 1 2 --json book/results/bos_alignment.json
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence

import torch

from ..config import stage_config
from ..data import toy_data
from ..hardware import autocast_for, use_bf16
from ..tokenizer import bos_id
from ..train import build_loader, train
from .results import paired_difference, save_result, spread

ARMS = {"stream": "value-embeddings", "bos": "bos-loader", "bestfit": "packing"}  # arm -> stage of the ladder
FIRST_K = 16
BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 257)  # document positions [BUCKETS[i], BUCKETS[i+1]) of the targets


def document_positions(x: torch.Tensor, bos: int) -> torch.Tensor:
    """For inputs ``x`` (B, T): how many tokens each position is past the latest BOS at or before it
    in its row (0 on a BOS), or -1 where the row has no BOS up to there (its document started
    before the row). The target ``y[:, t]`` is then token ``pos + 1`` of its document."""
    t = torch.arange(x.shape[-1], device=x.device).expand_as(x)
    last_bos = torch.where(x == bos, t, torch.full_like(t, -1)).cummax(dim=-1).values
    return torch.where(last_bos >= 0, t - last_bos, last_bos)


def document_rows(docs: Sequence[Sequence[int]], seq_len: int, batch_size: int, pad_id: int):
    """Batches (x, y) with one document per row from its BOS at position 0, cropped to seq_len + 1
    tokens; the positions after a short document hold ``pad_id`` with targets -1 (ignored)."""
    for i in range(0, len(docs), batch_size):
        chunk = docs[i : i + batch_size]
        rows = torch.full((len(chunk), seq_len + 1), -1, dtype=torch.long)
        for r, doc in enumerate(chunk):
            doc = doc[: seq_len + 1]
            rows[r, : len(doc)] = torch.tensor(doc, dtype=torch.long)
        x, y = rows[:, :-1].clone(), rows[:, 1:].clone()
        x[x < 0] = pad_id
        yield x, y


@torch.no_grad()
def loss_by_position(model, docs, bos: int, batch_size: int = 16, k: int = FIRST_K, autocast=None) -> dict:
    """Each document alone in a row from its BOS: mean loss on its first ``k`` tokens, on the rest,
    and per bucket of document position (``BUCKETS``)."""
    was_training = model.training
    model.eval()
    seq_len = model.cfg.seq_len
    n_buckets = len(BUCKETS) - 1
    sums, counts = torch.zeros(n_buckets, dtype=torch.float64), torch.zeros(n_buckets, dtype=torch.long)
    split = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.long)  # (first k, rest)
    edges = torch.tensor(BUCKETS)
    for x, y in document_rows(docs, seq_len, batch_size, bos):
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            loss = model(x, y, reduction="none").double()
        target_pos = document_positions(x, bos) + 1  # the target's position in its document (1 = first after BOS)
        keep = (y >= 0) & (target_pos >= 1)
        pos, loss = target_pos[keep], loss[keep]
        bucket = torch.bucketize(pos, edges, right=True) - 1
        sums += torch.zeros(n_buckets, dtype=torch.float64).index_add_(0, bucket, loss)
        counts += torch.bincount(bucket, minlength=n_buckets)
        early = pos <= k
        split[0][0] += loss[early].sum(); split[1][0] += early.sum()
        split[0][1] += loss[~early].sum(); split[1][1] += (~early).sum()
    model.train(was_training)
    return {"first_k": (split[0][0] / split[1][0]).item(), "rest": (split[0][1] / split[1][1]).item(),
            "tokens_first_k": int(split[1][0]), "tokens_rest": int(split[1][1]),
            "curve": [{"from": BUCKETS[i], "to": BUCKETS[i + 1] - 1, "loss": (sums[i] / counts[i]).item(),
                       "tokens": int(counts[i])} for i in range(n_buckets) if counts[i]]}


def run_arm(arm: str, seed: int, steps: int, k: int = FIRST_K, eval_tokens: int = 16_384, data=None) -> dict:
    """Train one arm (its stage at toy scale, compile off) and measure it; returns the figures of the run."""
    data = data or toy_data()
    cfg = stage_config(ARMS[arm], "toy", steps=steps, seed=seed, eval_every=0, eval_tokens=eval_tokens, compile=False)
    model, result = train(cfg, data, progress=False)
    bos = bos_id(data.enc)
    autocast = autocast_for(torch.device("cpu"), use_bf16(cfg.train.bf16, torch.device("cpu")))
    by_pos = loss_by_position(model, data.val_docs, bos, cfg.train.batch_size, k, autocast)
    loader = build_loader(cfg, data)  # the run's loader again, replayed over its batches, for what it cropped
    for _ in range(steps * cfg.train.grad_accum):
        loader.next_batch()
    stats = loader.stats.summary() if hasattr(loader, "stats") else {"crop_fraction": 0.0, "docs_used": None}
    return {"arm": arm, "stage": cfg.stage, "seed": seed, "steps": steps, "val_bpb": result.final_val_bpb,
            "final_train_loss": result.losses[-1], "tokens_per_second": result.tokens_per_second,
            "crop_fraction": stats["crop_fraction"], "docs_used": stats["docs_used"], "losses": result.losses,
            **by_pos, "first_k_minus_rest": by_pos["first_k"] - by_pos["rest"]}


FIGURES = ("first_k", "rest", "first_k_minus_rest", "val_bpb", "tokens_per_second", "final_train_loss", "crop_fraction")


def summarize(runs: list[dict], arms: Sequence[str]) -> dict:
    """Per arm, the spread of every figure over seeds; per pair of neighbouring arms (``a`` then ``b``),
    the paired difference ``b - a`` of every figure, keyed ``"b - a"``."""
    by = {a: sorted((r for r in runs if r["arm"] == a), key=lambda r: r["seed"]) for a in arms}
    out = {"arms": {a: {f: spread([r[f] for r in by[a]]) for f in FIGURES} for a in arms}, "differences": {}}
    for base, other in itertools.pairwise(arms):
        out["differences"][f"{other} - {base}"] = {
            f: paired_difference([r[f] for r in by[base]], [r[f] for r in by[other]]) for f in FIGURES}
    out["curve"] = {a: [{"from": c["from"], "to": c["to"], "loss": spread([r["curve"][i]["loss"] for r in by[a]])}
                        for i, c in enumerate(by[a][0]["curve"])] for a in arms}
    return out


def run(arms: Sequence[str] = ("stream", "bos", "bestfit"), seeds: Sequence[int] = (0, 1, 2), steps: int = 50, k: int = FIRST_K,
        json_path: str | None = None, command: str | None = None, verbose: bool = True) -> dict:
    """Every arm for every seed, interleaved by seed; the runs, their summary, and the protocol."""
    data = toy_data()
    runs = []
    for seed in seeds:
        for arm in arms:
            runs.append(run_arm(arm, seed, steps, k, data=data))
            if verbose:
                r = runs[-1]
                print(f"seed {seed} {arm:7s} first {k} tokens {r['first_k']:.3f} nats, rest {r['rest']:.3f}, "
                      f"val {r['val_bpb']:.4f} bpb, {r['tokens_per_second']:,.0f} tok/s", flush=True)
    result = {"arms": {a: ARMS[a] for a in arms}, "steps": steps, "k": k, "buckets": list(BUCKETS),
              "batch": [16, 256], "val": "the two held-out plays, each document alone in a row from its BOS",
              "runs": runs, "summary": summarize(runs, list(arms))}
    command = command or (f"python -m nanogpt_core.lab.bos_alignment --arms {' '.join(arms)} --steps {steps} "
                          f"--seeds {' '.join(map(str, seeds))}")
    return save_result(result, json_path, command, seeds, device="cpu")


def main(argv: list[str] | None = None) -> None:
    """``python -m nanogpt_core.lab.bos_alignment [--steps N] [--seeds S ...] [--json PATH]``."""
    parser = argparse.ArgumentParser(prog="python -m nanogpt_core.lab.bos_alignment", description=__doc__.split("\n")[0])
    parser.add_argument("--arms", nargs="+", default=["stream", "bos", "bestfit"], choices=list(ARMS),
                        help="compared in this order: each arm against the one before it")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=FIRST_K, help="the first k tokens of each document")
    parser.add_argument("--json", metavar="PATH", help="write the result here (e.g. book/results/bos_alignment.json)")
    a = parser.parse_args(argv)
    r = run(a.arms, a.seeds, a.steps, a.k, a.json)
    s = r["summary"]
    print(f"\n{r['hardware']}, {r['date']}; {a.steps} steps, seeds {a.seeds}")
    for f in FIGURES:
        print(f"  {f:18s} " + "   ".join(f"{arm} {s['arms'][arm][f]['mean']:.4f} ± {s['arms'][arm][f]['std']:.4f}"
                                         for arm in a.arms))
        for name, diffs in s["differences"].items():
            d = diffs[f]
            print(f"  {'':18s} {name}: {d['mean']:+.4f} [{d['min']:+.4f}, {d['max']:+.4f}] {d['verdict']}")


if __name__ == "__main__":
    main()
