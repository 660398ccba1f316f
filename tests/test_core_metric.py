"""CORE scoring on small bundles the tests write (no download): prompts, scored spans, the
batched scoring against one-row-at-a-time, and the score of models whose answers are known."""

import io
import json
import math
import zipfile

import pytest
import torch
import torch.nn.functional as F
from test_download import Server

from nanogpt_core import core_metric as C
from nanogpt_core.config import ModelConfig
from nanogpt_core.download import DownloadError
from nanogpt_core.model import GPT
from nanogpt_core.tokenizer import bos_id, train_tokenizer

WORDS = "red green blue cat dog bird sun moon star river hill tree stone cloud rain snow".split()


@pytest.fixture(scope="module")
def enc():
    text = " ".join(f"{a} {b} is {c}." for a in WORDS for b in WORDS[:4] for c in WORDS[4:8])
    return train_tokenizer([text, "Question: Answer: which one? The"], vocab_size=300)


def mc_items(n=6):
    return [{"query": f"Question: which one is {WORDS[i]}? Answer:", "choices": [" cat", " dog", " bird"], "gold": i % 3}
            for i in range(n)]


def schema_items(n=6):
    return [{"context_options": [f"The {WORDS[i]} {w}" for w in ("sun", "moon")], "continuation": f"is {WORDS[i + 4]}.",
             "gold": i % 2} for i in range(n)]


def lm_items(n=5):
    return [{"context": f"The {WORDS[i]} river ", "continuation": f"is {WORDS[i + 6]}"} for i in range(n)]


def write_bundle(root, tasks):
    """tasks: label -> (kind, shots, baseline percent, items). Returns the bundle folder."""
    bundle = root / "eval_bundle"
    (bundle / "eval_data").mkdir(parents=True)
    lines = ["icl_tasks:"]
    for label, (kind, shots, _, items) in tasks.items():
        (bundle / "eval_data" / f"{label}.jsonl").write_text("\n".join(json.dumps(i) for i in items) + "\n")
        lines += [f"- label: {label}", f"  dataset_uri: {label}.jsonl", f"  num_fewshot: [{shots}]",
                  f"  icl_task_type: {kind}"]
    (bundle / "core.yaml").write_text("\n".join(lines) + "\n")
    rows = ["Eval Task,Random baseline"] + [f"{label},{b}" for label, (_, _, b, _) in tasks.items()]
    (bundle / "eval_meta_data.csv").write_text("\n".join(rows) + "\n")
    return bundle


TASKS = {
    "mc": ("multiple_choice", 2, 100 / 3, mc_items()),
    "schema": ("schema", 1, 50, schema_items()),
    "lm": ("language_modeling", 1, 0, lm_items()),
}


class PrefixOracle(torch.nn.Module):
    """Knows every right answer: after any prefix of a right prompt it puts logit 30 on the
    token that follows, and 0 on everything else."""

    def __init__(self, enc, tasks):
        super().__init__()
        self.vocab, self.next = enc.n_vocab, {}
        for task in tasks:
            for idx, item in enumerate(task.items):
                right = {**item, "choices": [item["choices"][item["gold"]]]} if task.kind == "multiple_choice" else item
                if task.kind == "schema":
                    right = {**item, "context_options": [item["context_options"][item["gold"]]]}
                examples = C.fewshot_examples(task.items, idx, task.num_fewshot)
                text = C.render_prompts(task.kind, right, examples, task.delimiter)[-1]
                row = [bos_id(enc), *enc.encode_ordinary(text)]
                for t in range(len(row) - 1):
                    self.next[tuple(row[: t + 1])] = row[t + 1]

    def forward(self, x):
        logits = torch.zeros(*x.shape, self.vocab)
        for b in range(x.shape[0]):
            for t in range(x.shape[1]):
                nxt = self.next.get(tuple(x[b, : t + 1].tolist()))
                if nxt is not None:
                    logits[b, t, nxt] = 30.0
        return logits


class Uniform(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, x):
        return torch.zeros(*x.shape, self.vocab)


def test_load_bundle_reads_tasks_baselines_and_subsets(tmp_path):
    tasks = C.load_bundle(write_bundle(tmp_path, TASKS))
    assert [(t.label, t.kind, t.num_fewshot, t.delimiter) for t in tasks] == [
        ("mc", "multiple_choice", 2, " "), ("schema", "schema", 1, " "), ("lm", "language_modeling", 1, " ")]
    assert tasks[0].random_baseline == pytest.approx(1 / 3) and tasks[1].random_baseline == 0.5
    assert sorted(map(json.dumps, tasks[0].items)) == sorted(map(json.dumps, mc_items()))  # shuffled, all kept
    again = C.load_bundle(tmp_path / "eval_bundle", max_per_task=2)
    assert [t.items for t in again] == [t.items[:2] for t in tasks]  # the same fixed shuffle


def test_load_bundle_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="download_eval_bundle"):
        C.load_bundle(tmp_path)
    bundle = write_bundle(tmp_path, {"mc": TASKS["mc"]})
    (bundle / "eval_meta_data.csv").write_text("Eval Task,Random baseline\nother,25\n")
    with pytest.raises(ValueError, match="no row"):
        C.load_bundle(bundle)


def test_prompts_fewshot_and_spans():
    items = mc_items()
    shots = C.fewshot_examples(items, 0, 2)
    assert len(shots) == 2 and items[0] not in shots and shots == C.fewshot_examples(items, 0, 2)
    prompts = C.render_prompts("multiple_choice", items[0], shots[:1], " ")
    e = shots[0]
    assert prompts[1] == f"{e['query']} {e['choices'][e['gold']]}\n\n{items[0]['query']}  dog"
    lm = C.render_prompts("language_modeling", lm_items()[0], [], " ")
    assert lm == ["The red river", "The red river is sun"]
    assert C.scored_spans("multiple_choice", [[1, 2, 3, 4], [1, 2, 5]]) == [(2, 4), (2, 3)]
    assert C.scored_spans("schema", [[1, 7, 8, 9], [1, 6, 6, 8, 9]]) == [(2, 4), (3, 5)]
    assert C.scored_spans("language_modeling", [[1, 2], [1, 2, 3, 4]]) == [(2, 4)]
    assert C.scored_spans("multiple_choice", [[1, 2], [1, 2, 3]]) == [(1, 2), (1, 3)]  # a choice is never empty
    with pytest.raises(ValueError, match="prefix"):
        C.scored_spans("language_modeling", [[1, 5], [1, 2, 3]])


def test_batched_option_losses_match_one_row_at_a_time(enc, tmp_path):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=enc.n_vocab, n_layer=2, n_head=2, n_embd=32, seq_len=128)).eval()
    for task in C.load_bundle(write_bundle(tmp_path, TASKS)):
        rows, spans = C.prompt_rows(enc, task, 1, 128)
        means, _, _ = C.option_losses(model, rows, spans, pad=bos_id(enc))
        for row, (start, end), mean in zip(rows, spans, means):
            with torch.no_grad():
                logits = model(torch.tensor([row]))[0]
            reference = sum(-F.log_softmax(logits[t - 1], -1)[row[t]] for t in range(start, end)) / (end - start)
            assert mean.item() == pytest.approx(reference.item(), rel=1e-5)


def test_truncation_keeps_the_scored_tokens(enc, tmp_path):
    task = C.load_bundle(write_bundle(tmp_path, TASKS))[0]
    rows, spans = C.prompt_rows(enc, task, 0, 10_000)
    short_rows, short_spans = C.prompt_rows(enc, task, 0, 12)
    for row, (s, e), srow, (ss, se) in zip(rows, spans, short_rows, short_spans):
        assert len(srow) <= 12 and srow[ss:se] == row[s:e] and srow[ss - 1] == row[s - 1]
    with pytest.raises(ValueError, match="do not fit"):
        C.prompt_rows(enc, task, 0, min(e - s for s, e in spans))


def test_a_model_that_knows_the_answers_scores_core_one_and_chance_scores_as_computed(enc, tmp_path):
    tasks = C.load_bundle(write_bundle(tmp_path, TASKS))
    oracle = C.core_score(PrefixOracle(enc, tasks), enc, tasks, max_len=10_000, progress=False)
    assert all(r["accuracy"] == 1.0 and r["centered"] == 1.0 for r in oracle["tasks"].values())
    assert oracle["core"] == 1.0
    # all choices tie under a uniform model: argmin picks the first one, so accuracy = share of gold == 0
    flat = C.core_score(Uniform(enc.n_vocab), enc, tasks, max_len=10_000, progress=False)["tasks"]
    for task in tasks:
        if task.kind == "language_modeling":
            assert flat[task.label]["accuracy"] == 0.0
        else:
            expected = sum(item["gold"] == 0 for item in task.items) / len(task.items)
            assert flat[task.label]["accuracy"] == expected
            assert flat[task.label]["centered"] == pytest.approx((expected - task.random_baseline) / (1 - task.random_baseline))


def test_centered_is_zero_at_chance_and_one_at_perfect():
    assert C.centered(0.25, 0.25) == 0 and C.centered(1.0, 0.25) == 1 and math.isclose(C.centered(0.0, 0.5), -1)


def bundle_zip(tmp_path):
    write_bundle(tmp_path / "src", {"lm": TASKS["lm"]})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path in sorted((tmp_path / "src").rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(tmp_path / "src"))
    return buf.getvalue()


@pytest.mark.allow_hosts(["127.0.0.1"])
def test_download_eval_bundle_unpacks_and_rejects_a_damaged_archive(tmp_path):
    good = bundle_zip(tmp_path)
    srv = Server({"eval_bundle.zip": good, "broken.zip": good[: len(good) // 2] + b"x" * 10})
    try:
        bundle = C.download_eval_bundle(tmp_path / "out", url=f"{srv.url}/eval_bundle.zip", progress=False)
        assert [t.label for t in C.load_bundle(bundle)] == ["lm"]
        assert C.download_eval_bundle(tmp_path / "out", url="http://127.0.0.1:9/unused") == bundle  # kept
        with pytest.raises(DownloadError, match="deleted"):
            C.download_eval_bundle(tmp_path / "bad", url=f"{srv.url}/broken.zip", progress=False, retries=0)
        assert not list((tmp_path / "bad").glob("*.zip*"))
    finally:
        srv.close()
