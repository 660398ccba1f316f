"""Evaluation: validation loss, bits per byte, and text sampling.

Bits per byte makes models with different tokenizers comparable. Over the validation
targets y_i with per-token loss l_i (nats) and UTF-8 length b_i (bytes):

    bpb = sum_i l_i / (ln 2 * sum_i b_i)

Special tokens (BOS) have b_i = 0 and are left out of both sums.
"""

from __future__ import annotations

import contextlib
import math

import tiktoken
import torch

from .data import eval_batches
from .tokenizer import BOS


def bits_per_byte(losses: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor) -> float:
    """Bits per byte of per-token losses (nats) for the given target ids."""
    nbytes = token_bytes.to(targets.device)[targets.clamp(min=0)] * (targets >= 0)
    counted = nbytes > 0
    total_bytes = nbytes.sum().item()
    if total_bytes == 0:
        raise ValueError("no target token carries any bytes; cannot compute bits per byte")
    return (losses.float() * counted).sum().item() / (math.log(2) * total_bytes)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    token_bytes: torch.Tensor,
    batch_size: int,
    max_tokens: int,
    autocast=contextlib.nullcontext,
) -> dict[str, float]:
    """Mean loss (nats per token) and bits per byte over the first ``max_tokens`` of a stream."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    seq_len = model.cfg.seq_len  # a compiled model forwards attribute access to the original
    losses, targets = [], []
    for x, y in eval_batches(tokens, batch_size, seq_len, max_tokens):
        x, y = x.to(device), y.to(device)
        with autocast():
            losses.append(model(x, y, reduction="none").float())
        targets.append(y)
    model.train(was_training)
    loss, target = torch.cat(losses), torch.cat(targets)
    return {"loss": loss.mean().item(), "bpb": bits_per_byte(loss, target, token_bytes)}


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
