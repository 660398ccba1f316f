"""Byte-level BPE: trained with rustbpe, run with tiktoken, with a BOS special token.

BPE starts from the 256 byte values and repeatedly merges the most frequent adjacent pair
into a new token, until the vocabulary has the requested size. Text is first split into
chunks by a regex (words, numbers of 1-2 digits, punctuation runs, whitespace) so merges
never cross chunk boundaries. The merge table ("mergeable ranks") is all tiktoken needs.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from pathlib import Path

import rustbpe
import tiktoken
import torch

# GPT-4's split pattern with numbers grouped by 1-2 digits instead of 1-3 (as nanochat does).
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
BOS = "<|bos|>"  # marks the start of every document


def train_tokenizer(texts: Iterable[str], vocab_size: int, name: str = "speedrun") -> tiktoken.Encoding:
    """Train a BPE of ``vocab_size`` tokens in all: 256 bytes + merges + the BOS token."""
    if vocab_size < 258:
        raise ValueError(f"vocab_size={vocab_size} is too small: 256 byte tokens + BOS need at least 257 (+1 merge)")
    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(iter(texts), vocab_size - 1, pattern=SPLIT_PATTERN)
    ranks = {bytes(token): rank for token, rank in bpe.get_mergeable_ranks()}
    return tiktoken.Encoding(name, pat_str=bpe.get_pattern(), mergeable_ranks=ranks, special_tokens={BOS: len(ranks)})


def bos_id(enc: tiktoken.Encoding) -> int:
    return enc.encode_single_token(BOS)


def encode_documents(enc: tiktoken.Encoding, docs: list[str]) -> list[list[int]]:
    """Tokenize documents, each prefixed with BOS (specials in the text stay plain text)."""
    bos = bos_id(enc)
    return [[bos, *ids] for ids in enc.encode_ordinary_batch(docs)]


def token_bytes(enc: tiktoken.Encoding) -> torch.Tensor:
    """UTF-8 byte length of every token id (special tokens: 0), for bits per byte."""
    special_ids = {enc.encode_single_token(s) for s in enc.special_tokens_set}
    lengths = [0 if i in special_ids else len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)]
    return torch.tensor(lengths, dtype=torch.long)


def save_tokenizer(enc: tiktoken.Encoding, path: str | Path) -> None:
    """Write the tokenizer as JSON (pattern, base64 merge table, special tokens)."""
    ranks = {base64.b64encode(token).decode(): rank for token, rank in enc._mergeable_ranks.items()}
    payload = {"name": enc.name, "pattern": enc._pat_str, "mergeable_ranks": ranks, "special_tokens": enc._special_tokens}
    Path(path).write_text(json.dumps(payload))


def load_tokenizer(path: str | Path) -> tiktoken.Encoding:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer at {path}; train one with nanogpt_core.tokenizer.train_tokenizer")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the tokenizer JSON file written by the `tokenizer` command")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        ranks = {base64.b64decode(token, validate=True): int(rank) for token, rank in payload["mergeable_ranks"].items()}
        enc = tiktoken.Encoding(
            payload["name"], pat_str=payload["pattern"], mergeable_ranks=ranks, special_tokens=payload["special_tokens"]
        )
    except Exception as err:  # bad JSON, a missing key, bad base64, or a table tiktoken rejects
        what = f"no {err} entry" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
        raise ValueError(f"{path} is not a tokenizer JSON written by the `tokenizer` command ({what}); "
                         "write it again with `python -m nanogpt_core tokenizer --dir SHARDS --out PATH`") from err
    if BOS not in enc.special_tokens_set:
        raise ValueError(f"{path} has no {BOS} special token, which every document starts with; "
                         "write it again with `python -m nanogpt_core tokenizer`")
    return enc
