"""Evaluation: validation loss, bits per byte, and text sampling.

Bits per byte makes models with different tokenizers comparable. Over the validation
targets y_i with per-token loss l_i (nats) and UTF-8 length b_i (bytes):

    bpb = sum_i l_i / (ln 2 * sum_i b_i)

Special tokens (BOS) have b_i = 0 and are left out of both sums.

The validation set is run 1's (nanochat 348fbb3, base_train.py and loss_eval.py): rows built by
BestFit-Crop from the val split's documents (every row starts at a BOS and is 100% full), the
same rows at every evaluation, each process evaluating its own share of the documents; the
nats and bytes are summed over the processes before the one division. Every stage is measured
on these rows, whatever loader it trains with, so the scoreboard compares one metric.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import tiktoken
import torch
import torch.distributed as dist

from .checkpoint import checkpoint_config, load_weights, tokenizer_fingerprint
from .config import ConfigError
from .loaders import DocumentLoader
from .model import GPT
from .tokenizer import BOS, bos_id


def nats_and_bytes(losses: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the losses of the targets that carry bytes, sum of their bytes), as 0-d tensors.
    Targets < 0 (ignored positions) and special tokens (0 bytes) count in neither."""
    nbytes = token_bytes.to(targets.device)[targets.clamp(min=0)] * (targets >= 0)
    return (losses.float() * (nbytes > 0)).sum(), nbytes.sum()


def bits_per_byte(losses: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor) -> float:
    """Bits per byte of per-token losses (nats) for the given target ids."""
    nats, nbytes = nats_and_bytes(losses, targets, token_bytes)
    if nbytes.item() == 0:
        raise ValueError("no target token carries any bytes; cannot compute bits per byte")
    return nats.item() / (math.log(2) * nbytes.item())


def val_batches(data, batch_size: int, seq_len: int, max_tokens: int, rank: int = 0,
                world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This process's validation batches, as run 1 builds them: ``max_tokens // (batch_size *
    seq_len * world_size)`` batches of BestFit-Crop rows of the val documents ``data.val_docs``,
    read in order and dealt to the processes (row groups of shards on disk, every
    ``world_size``-th document of a list). Every call yields the same batches."""
    steps = max_tokens // (batch_size * seq_len * world_size)
    if steps < 1:
        raise ValueError(f"eval_tokens={max_tokens} is less than one batch of {batch_size} x {seq_len} tokens on each of "
                         f"{world_size} process(es): raise eval_tokens to at least {batch_size * seq_len * world_size}")
    bos = bos_id(data.enc)
    loader = DocumentLoader(data.val_source, batch_size, seq_len, "bestfit", rank=rank, world_size=world_size,
                            bos_id=bos, pad_id=bos)
    for _ in range(steps):
        yield loader.next_batch()


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches, token_bytes: torch.Tensor, autocast=contextlib.nullcontext) -> dict[str, float]:
    """Mean loss (nats per target) and bits per byte over ``batches``, summed over the processes
    of a run (every process passes its own batches; run 1's evaluate_bpb)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # nats and bytes (counted), loss and targets (all)
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast():
            losses = model(x, y, reduction="none").float()
        nats, nbytes = nats_and_bytes(losses, y, token_bytes)
        totals += torch.stack([nats.double(), nbytes.double(), (losses * (y >= 0)).sum().double(), (y >= 0).sum().double()])
    model.train(was_training)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(totals)
    nats, nbytes, loss_sum, count = totals.tolist()
    if nbytes == 0:
        raise ValueError("no validation target carries any bytes; cannot compute bits per byte")
    return {"loss": loss_sum / count, "bpb": nats / (math.log(2) * nbytes)}


def checkpoint_model(ckpt: dict, path, data, device, tokenizer_label: str) -> torch.nn.Module:
    """The GPT of checkpoint ``ckpt`` (read from ``path``) on ``device``, refused with a ConfigError
    where ``data``'s tokenizer (named ``tokenizer_label`` in the message) is not the run's."""
    cfg = checkpoint_config(ckpt, path)
    if data.enc.n_vocab != cfg.model.vocab_size:
        raise ConfigError(f"{path} has a vocabulary of {cfg.model.vocab_size} tokens but {tokenizer_label} has "
                          f"{data.enc.n_vocab}: pass the --data and --tokenizer the run was trained with")
    trained_with = ((ckpt.get("format") or {}).get("data") or {}).get("tokenizer")
    if trained_with and trained_with != tokenizer_fingerprint(data.enc):
        raise ConfigError(f"{path} was trained with another tokenizer than {tokenizer_label}: pass the --data "
                          "and --tokenizer of its run")
    model = GPT(cfg.model).to(device)
    load_weights(model, ckpt["model"], path)
    return model


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    enc: tiktoken.Encoding,
    prompt: str = "",
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int = 0,
) -> str:
    """Continue ``prompt`` (after a BOS) by sampling; returns the generated text only."""
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    ids = [enc.encode_single_token(BOS), *enc.encode_ordinary(prompt)]
    idx = torch.tensor([ids], device=device)
    seq_len = model.cfg.seq_len
    for _ in range(max_new_tokens):
        logits = model(idx[:, -seq_len:])[:, -1, :]
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=g)
        idx = torch.cat([idx, nxt], dim=1)
    return enc.decode(idx[0, len(ids):].tolist())
