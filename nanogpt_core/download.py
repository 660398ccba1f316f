"""Download the FineWeb-edu shards of the speedrun, and train its tokenizer on them.

The data is nanochat's: ``karpathy/fineweb-edu-100b-shuffle`` on the Hugging Face hub,
parquet shards ``shard_00000.parquet`` ... ``shard_01822.parquet`` of about 250M characters
each, one column ``text``. Every shard is fetched over plain HTTPS, so a download can resume:

    1. bytes go to ``NAME.partial``; if it exists, ask only for the rest (``Range: bytes=n-``)
    2. the finished file must have the size the server announced (``Content-Length``)
       and must open as parquet with a ``text`` column
    3. only then is it renamed to ``NAME`` (atomic), so a ``NAME`` on disk is always whole

Network errors are retried with exponential backoff (1, 2, 4, ... seconds).

    python -m nanogpt_core download --shards 8 --dir data/fineweb
    python -m nanogpt_core tokenizer --dir data/fineweb --vocab 32768 --out tok.json

nanochat's run 1 downloaded 370 shards and validated on the last, shard_00369 (``plan`` prints
why: the packing loader discards ~35% of the document tokens).
"""

from __future__ import annotations

import http.client
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from .data import iter_parquet_texts, open_shard

BASE_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
MAX_SHARD = 1822  # the last shard of the dataset is shard_01822.parquet
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A shard could not be fetched or failed verification; the message says what to do."""


def shard_name(index: int) -> str:
    if not 0 <= index <= MAX_SHARD:
        raise ValueError(f"shard index {index} is out of range; the dataset has shards 0..{MAX_SHARD}")
    return f"shard_{index:05d}.parquet"


def verify_parquet(path: str | Path) -> int:
    """Raise DownloadError unless ``path`` is a parquet file with a ``text`` column (``data.open_shard``'s
    check); returns its row count."""
    try:
        return open_shard(path).metadata.num_rows
    except (ValueError, FileNotFoundError) as err:
        raise DownloadError(str(err)) from err


def _remote_size(response) -> int | None:
    """The full file size from a 200 (Content-Length) or 206 (Content-Range: bytes a-b/SIZE) reply."""
    if response.status == 206:
        total = response.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def download_file(url: str, dest: str | Path, *, retries: int = 5, backoff: float = 1.0, timeout: float = 30.0,
                  progress: bool = True, verify=verify_parquet) -> Path:
    """Fetch ``url`` to ``dest``: resumable, size-verified, checked by ``verify`` (which raises
    DownloadError for a damaged file; default: a parquet shard), atomic. Returns ``dest``."""
    from tqdm.auto import tqdm

    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    for attempt in range(retries + 1):
        have = partial.stat().st_size if partial.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if have and response.status != 206:  # the server ignored the Range: start over
                    have = 0
                size = _remote_size(response)
                with open(partial, "ab" if have else "wb") as f, tqdm(
                    total=size, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=not progress, leave=False
                ) as bar:
                    while chunk := response.read(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # "range not satisfiable": the partial file is already complete
                size = have
            elif err.code in (401, 403, 404):
                raise DownloadError(f"{url} answered HTTP {err.code}; check the shard index and the URL") from err
            else:
                _wait_or_fail(url, attempt, retries, backoff, err)
                continue
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:  # cut connections too
            _wait_or_fail(url, attempt, retries, backoff, err)
            continue
        got = partial.stat().st_size
        if size is not None and got != size:
            if got > size:  # more bytes than the file has: the partial file is not this file
                partial.unlink()
            _wait_or_fail(url, attempt, retries, backoff, f"got {got:,} bytes, expected {size:,}")
            continue
        try:
            verify(partial)
        except DownloadError as err:
            partial.unlink()
            raise DownloadError(f"downloaded {dest.name} but it is damaged and was deleted: {err}; run the download again") from err
        os.replace(partial, dest)
        return dest
    raise AssertionError("unreachable")


def _wait_or_fail(url: str, attempt: int, retries: int, backoff: float, why) -> None:
    if attempt >= retries:
        raise DownloadError(f"could not download {url} after {retries + 1} attempts ({why}); "
                            "check the network and run the command again: it resumes where it stopped")
    wait = backoff * 2**attempt
    print(f"attempt {attempt + 1} failed ({why}); retrying in {wait:g} s", flush=True)
    time.sleep(wait)


def download_shards(n_shards: int, data_dir: str | Path, base_url: str = BASE_URL, **kwargs) -> list[Path]:
    """Download shards 0..n_shards-1 into ``data_dir`` (the last of them is the val split, as in nanochat)."""
    if not 2 <= n_shards <= MAX_SHARD + 1:
        raise ValueError(f"--shards {n_shards}: need 2..{MAX_SHARD + 1} (train shards + the last one as val)")
    paths = []
    for i in range(n_shards):
        name = shard_name(i)
        paths.append(download_file(f"{base_url.rstrip('/')}/{name}", Path(data_dir) / name, **kwargs))
    return paths


def train_tokenizer_on_shards(data_dir: str | Path, vocab_size: int = 32_768, max_chars: int = 2_000_000_000,
                              doc_cap: int = 10_000):
    """Train the BPE tokenizer on the train shards of ``data_dir``: at most ``max_chars`` characters,
    each document cut to ``doc_cap`` characters (nanochat's defaults: 2B characters, 10,000 per doc)."""
    from .data import fineweb_shards
    from .tokenizer import train_tokenizer

    def texts():
        budget = max_chars
        for text in iter_parquet_texts(fineweb_shards(data_dir, "train")):
            text = text[:doc_cap][:budget]
            budget -= len(text)
            yield text
            if budget <= 0:
                return

    return train_tokenizer(texts(), vocab_size, name=f"fineweb{vocab_size}")


def fineweb_data(data_dir: str | Path, tokenizer_path: str | Path):
    """The downloaded shards as a ``TokenizedCorpus``, without holding them in memory.

    ``train_docs`` is a ``data.ParquetDocuments`` over the train shards (all but the last):
    documents are read and tokenized as training goes, every rank reads its own row groups,
    and a checkpoint records a position in the shards. Every stage trains on it: the plain
    token stream (``gpt2`` to ``value-embeddings``) through ``loaders.ConsecutiveLoader``,
    the BOS-aligned loaders (``bos-loader``, ``packing``) through ``loaders.DocumentLoader``.
    ``val_docs`` is the same over the val shard (the last one), read from its start at every
    evaluation, each rank its own row groups, as run 1 reads it (``evaluate.val_batches``).
    """
    from .data import ParquetDocuments, TokenizedCorpus, fineweb_shards
    from .tokenizer import bos_id, load_tokenizer, token_bytes

    enc = load_tokenizer(tokenizer_path)
    bos = bos_id(enc)

    def encode(texts: list[str]) -> list[list[int]]:
        return [[bos, *ids] for ids in enc.encode_ordinary_batch(texts)]

    train_docs = ParquetDocuments(fineweb_shards(data_dir, "train"), encode)
    val_docs = ParquetDocuments(fineweb_shards(data_dir, "val"), encode)
    return TokenizedCorpus(enc, train_docs, val_docs, token_bytes(enc), source=f"FineWeb-edu shards in {data_dir}")
