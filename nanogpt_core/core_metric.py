"""CORE: the in-context-learning score that nanochat's leaderboard ranks models by.

CORE (Li et al. 2024, DCLM) averages 22 tasks, each scored with nothing but the model's own
next-token losses on few-shot prompts. There are three kinds of task:

- multiple choice: one question, several candidate continuations (the choices). The model
  picks the choice whose tokens have the lowest mean loss.
- schema: several candidate contexts, one continuation. The model picks the context under
  which the continuation's tokens have the lowest mean loss.
- language modeling: one context and one continuation. The item counts as right when greedy
  decoding (the argmax at every position) reproduces every continuation token.

A task's accuracy a is centered by its random-guess accuracy r: c = (a - r) / (1 - r), so 0 is
chance and 1 is perfect, and CORE is the mean of c over the tasks. GPT-2 1.5B scores 0.2565.

The tasks come from the eval bundle nanochat uses (``download_eval_bundle``):
``core.yaml`` lists them, ``eval_meta_data.csv`` gives each one's random baseline (in percent),
and ``eval_data/`` holds the items as JSON lines.

    python -m nanogpt_core evaluate --checkpoint ckpt.pt --data data/fineweb --tokenizer tok.json --core data/eval_bundle
"""

from __future__ import annotations

import csv
import json
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

import tiktoken
import torch
import torch.nn.functional as F

from .tokenizer import bos_id

EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
KINDS = ("multiple_choice", "schema", "language_modeling")


@dataclass
class Task:
    label: str
    kind: str  # one of KINDS
    num_fewshot: int
    delimiter: str  # between context and continuation, e.g. " " or "\nAnswer: "
    random_baseline: float  # accuracy of guessing, as a fraction
    items: list[dict]


# ---- the bundle ------------------------------------------------------------------------------


def verify_zip(path: str | Path) -> None:
    """Raise DownloadError unless ``path`` is a readable zip archive holding an ``eval_bundle/`` folder."""
    from .download import DownloadError

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            bad = archive.testzip()
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{path} is not a readable zip archive ({err})") from err
    if bad is not None:
        raise DownloadError(f"{path}: member {bad} is damaged")
    if not any(name.startswith("eval_bundle/") for name in names):
        raise DownloadError(f"{path} has no eval_bundle/ folder")


def download_eval_bundle(dest: str | Path, url: str = EVAL_BUNDLE_URL, **kwargs) -> Path:
    """Download and unpack the CORE eval bundle into ``dest``; returns ``dest / "eval_bundle"``.

    Resumable and verified like the data shards (``download.download_file``); an unpacked
    bundle already in place is kept.
    """
    from .download import download_file

    dest = Path(dest)
    bundle = dest / "eval_bundle"
    if (bundle / "core.yaml").exists():
        return bundle
    archive = download_file(url, dest / "eval_bundle.zip", verify=verify_zip, **kwargs)
    with zipfile.ZipFile(archive) as z:
        z.extractall(dest)
    return bundle


def load_bundle(bundle: str | Path, max_per_task: int = -1) -> list[Task]:
    """The tasks of an unpacked bundle. ``max_per_task`` > 0 keeps that many items of each
    (after a fixed shuffle, so a subset is the same every time: a quick, noisier estimate)."""
    import yaml

    bundle = Path(bundle)
    config, meta, data = bundle / "core.yaml", bundle / "eval_meta_data.csv", bundle / "eval_data"
    for path in (config, meta, data):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: {bundle} is not an unpacked CORE eval bundle; get one with "
                f"nanogpt_core.core_metric.download_eval_bundle(DIR) (it unpacks to DIR/eval_bundle)"
            )
    with open(meta, encoding="utf-8") as f:
        baselines = {row["Eval Task"]: float(row["Random baseline"]) / 100 for row in csv.DictReader(f)}
    tasks = []
    for spec in yaml.safe_load(config.read_text(encoding="utf-8"))["icl_tasks"]:
        label, kind = spec["label"], spec["icl_task_type"]
        if kind not in KINDS:
            raise ValueError(f"task {label!r} has icl_task_type {kind!r}; expected one of {', '.join(KINDS)}")
        if label not in baselines:
            raise ValueError(f"task {label!r} has no row in {meta} (its random baseline)")
        lines = (data / spec["dataset_uri"]).read_text(encoding="utf-8").splitlines()
        items = [json.loads(line) for line in lines if line.strip()]
        random.Random(1337).shuffle(items)
        if max_per_task > 0:
            items = items[:max_per_task]
        shots = spec.get("num_fewshot", [0])
        tasks.append(Task(label, kind, shots[0] if isinstance(shots, list) else shots,
                          spec.get("continuation_delimiter", " "), baselines[label], items))
    return tasks


# ---- prompts ---------------------------------------------------------------------------------


def fewshot_examples(items: list[dict], idx: int, k: int) -> list[dict]:
    """``k`` other items as worked examples for item ``idx``: the same ones on every run."""
    others = [i for i in range(len(items)) if i != idx]
    return [items[i] for i in random.Random(1234 + idx).sample(others, min(k, len(others)))]


def render_prompts(kind: str, item: dict, examples: list[dict], delimiter: str) -> list[str]:
    """The full texts to score. Worked examples are separated by blank lines.

    multiple_choice: one prompt per choice; schema: one prompt per context option;
    language_modeling: [context alone, context + continuation].
    """
    if kind == "multiple_choice":
        shots = "".join(f"{e['query']}{delimiter}{e['choices'][e['gold']]}\n\n" for e in examples)
        return [f"{shots}{item['query']}{delimiter}{choice}" for choice in item["choices"]]
    if kind == "schema":
        shots = "".join(f"{e['context_options'][e['gold']]}{delimiter}{e['continuation']}\n\n" for e in examples)
        return [f"{shots}{context}{delimiter}{item['continuation']}" for context in item["context_options"]]
    if kind == "language_modeling":
        shots = "".join(f"{e['context'].strip()}{delimiter}{e['continuation']}\n\n" for e in examples)
        context = f"{shots}{item['context'].strip()}{delimiter}"
        # stripped, so that trailing spaces cannot merge into the continuation's first token
        return [context.strip(), context + item["continuation"]]
    raise ValueError(f"unknown task kind {kind!r}; expected one of {', '.join(KINDS)}")


def scored_spans(kind: str, token_rows: list[list[int]]) -> list[tuple[int, int]]:
    """For each tokenized prompt, the [start, end) positions whose tokens are scored.

    multiple_choice: after the prefix all choices share; schema: the suffix all contexts share;
    language_modeling: the second prompt's tokens after the first prompt (which must be its prefix).
    """
    if kind == "language_modeling":
        without, with_ = token_rows
        if with_[: len(without)] != without or len(with_) <= len(without):
            raise ValueError("the context's tokens are not a prefix of context + continuation")
        return [(len(without), len(with_))]
    rows = token_rows if kind == "multiple_choice" else [row[::-1] for row in token_rows]
    shared, shortest = 0, min(len(row) for row in rows)
    while shared < shortest - 1 and len({row[shared] for row in rows}) == 1:  # every row keeps a token
        shared += 1
    if kind == "multiple_choice":
        return [(shared, len(row)) for row in token_rows]
    if shared == 0:
        raise ValueError("the schema prompts share no final tokens: the continuation did not tokenize alike")
    return [(len(row) - shared, len(row)) for row in token_rows]


# ---- scoring ---------------------------------------------------------------------------------


def prompt_rows(enc: tiktoken.Encoding, task: Task, idx: int, max_len: int) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Item ``idx`` of ``task`` as token rows (BOS first) and each row's scored [start, end).

    A model sees at most ``max_len`` tokens, so a longer row keeps its end, where the scored
    tokens are; language modeling keeps only the row with the continuation.
    """
    item = task.items[idx]
    prompts = render_prompts(task.kind, item, fewshot_examples(task.items, idx, task.num_fewshot), task.delimiter)
    bos = bos_id(enc)
    rows = [[bos, *ids] for ids in enc.encode_ordinary_batch(prompts)]
    spans = scored_spans(task.kind, rows)
    if task.kind == "language_modeling":
        rows = rows[1:]
    cut = [max(0, len(row) - max_len) for row in rows]
    rows = [row[c:] for row, c in zip(rows, cut)]
    spans = [(start - c, end - c) for (start, end), c in zip(spans, cut)]
    if any(start < 1 for start, _ in spans):
        raise ValueError(f"{task.label} item {idx}: its scored tokens and the one before them do not fit in the model's {max_len} positions")
    return rows, spans


@torch.no_grad()
def option_losses(model, rows: list[list[int]], spans: list[tuple[int, int]], pad: int, device="cpu"):
    """One padded batch through the model: each row's mean loss over its scored tokens, and the
    logits. Rows are padded on the right, which a causal model never looks at."""
    width = max(len(row) for row in rows)
    x = torch.tensor([row + [pad] * (width - len(row)) for row in rows], device=device)
    logits = model(x).float()
    # position t predicts token t + 1, so tokens [start, end) are scored at positions [start - 1, end - 1)
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none")
    means = torch.stack([losses[i, start - 1 : end - 1].mean() for i, (start, end) in enumerate(spans)])
    return means, logits, x


def score_item(model, enc: tiktoken.Encoding, task: Task, idx: int, max_len: int, device="cpu") -> bool:
    """Whether the model gets item ``idx`` of ``task`` right (see the module docstring)."""
    rows, spans = prompt_rows(enc, task, idx, max_len)
    means, logits, x = option_losses(model, rows, spans, bos_id(enc), device)
    if task.kind == "language_modeling":
        start, end = spans[0]
        return bool((logits[0, start - 1 : end - 1].argmax(-1) == x[0, start:end]).all())
    return int(means.argmin()) == task.items[idx]["gold"]


def centered(accuracy: float, random_baseline: float) -> float:
    """(accuracy - r) / (1 - r): 0 at chance, 1 when every item is right."""
    return (accuracy - random_baseline) / (1 - random_baseline)


def core_score(model, enc: tiktoken.Encoding, tasks: list[Task], max_len: int, device="cpu",
               progress: bool = True) -> dict:
    """Accuracy and centered accuracy of every task, and CORE, their centered mean."""
    from tqdm.auto import tqdm

    model.eval()
    results = {}
    for task in tasks:
        right = sum(score_item(model, enc, task, i, max_len, device)
                    for i in tqdm(range(len(task.items)), desc=task.label, disable=not progress, leave=False))
        accuracy = right / len(task.items)
        results[task.label] = {"accuracy": accuracy, "centered": centered(accuracy, task.random_baseline),
                               "items": len(task.items)}
    core = sum(r["centered"] for r in results.values()) / len(results)
    return {"tasks": results, "core": core}
