"""The checks of chapters 1 and 2 fail on a stub, fail on plausible wrong answers, pass on the solution."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from nanogpt_core import bpe
from nanogpt_core.attention import naive_attention
from nanogpt_core.classroom.checks import CheckFailed
from nanogpt_core.classroom.checks.baseline import (
    check_causal_attention,
    check_count_params,
    check_train_step,
    gpt_param_count,
)
from nanogpt_core.classroom.checks.tokens import (
    check_bits_per_byte,
    check_bpe_train,
    check_merge,
    check_most_frequent_pair,
    reference_bpe_train,
)


def stub(*args, **kwargs):
    raise NotImplementedError


# ---- chapter 1: BPE merge step ---------------------------------------------------------------


def pair_solution(ids):
    counts = Counter(zip(ids, ids[1:]))
    best = max(counts.values())
    return min(p for p, c in counts.items() if c == best)


def pair_first_seen_tie(ids):  # Counter.most_common breaks ties by first occurrence, not by the smallest pair
    return Counter(zip(ids, ids[1:])).most_common(1)[0][0]


def pair_no_overlap(ids):  # counts only every other pair
    return Counter(zip(ids[::2], ids[1::2])).most_common(1)[0][0]


def merge_solution(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if ids[i : i + 2] == list(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_overlapping(ids, pair, new_id):  # replaces every matching position, consuming nothing
    return [new_id if tuple(ids[i : i + 2]) == pair else t for i, t in enumerate(ids)]


def merge_drops_last(ids, pair, new_id):  # the loop stops one short and loses the last id
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def test_most_frequent_pair_check():
    with pytest.raises(CheckFailed, match="not implemented"):
        check_most_frequent_pair(stub)
    with pytest.raises(CheckFailed, match="tie"):
        check_most_frequent_pair(pair_first_seen_tie)
    with pytest.raises(CheckFailed):
        check_most_frequent_pair(pair_no_overlap)
    with pytest.raises(CheckFailed, match="pair"):
        check_most_frequent_pair(lambda ids: ids[0])
    assert check_most_frequent_pair(pair_solution)
    assert check_most_frequent_pair(bpe.most_frequent_pair)


def test_merge_check():
    with pytest.raises(CheckFailed, match="not implemented"):
        check_merge(stub)
    with pytest.raises(CheckFailed, match="overlapping|aaab"):
        check_merge(merge_overlapping)
    with pytest.raises(CheckFailed):
        check_merge(merge_drops_last)
    assert check_merge(merge_solution)
    assert check_merge(bpe.merge)


def test_reference_bpe_matches_rustbpe():
    """The plain-Python trainer learns exactly rustbpe's merges (same counts, same tie-break)."""
    from nanogpt_core.tokenizer import train_tokenizer

    text = "the cat sat on the mat; the hat! 12345 aaaa bbbb aaaa " * 3 + "ünïcödé ünïcödé text"
    merges = bpe.train_bpe(text, 40)
    enc = train_tokenizer([text], 256 + len(merges) + 1)
    table = bpe.token_table(merges)
    assert {table[i]: i for i in table} == enc._mergeable_ranks
    assert bpe.encode(text, merges) == enc.encode_ordinary(text)
    assert bpe.decode(bpe.encode(text, merges), merges) == text


# ---- chapter 1: the BPE training loop ------------------------------------------------------------


def pair_every_other(ids):  # counts the pairs (0, 1), (2, 3), ... only, breaks ties right
    counts = Counter(zip(ids[::2], ids[1::2])) or bpe.pair_counts(ids)
    best = max(counts.values())
    return min(p for p, c in counts.items() if c == best)


def bpe_train_solution(ids, n_merges):
    ids, merges = list(ids), {}
    for k in range(n_merges):
        if len(ids) < 2:
            break
        pair = pair_solution(ids)
        merges[pair] = 256 + k
        ids = merge_solution(ids, pair, 256 + k)
    return merges, ids


def bpe_train_with(pair_fn=pair_solution, merge_fn=merge_solution, first_id=256, stop=True):
    def train(ids, n_merges):
        ids, merges = list(ids), {}
        for k in range(n_merges):
            if stop and len(ids) < 2:
                break
            pair = pair_fn(ids)
            merges[pair] = first_id + k
            ids = merge_fn(ids, pair, first_id + k)
        return merges, ids

    return train


def bpe_train_merges_only_last_n(ids, n_merges):  # forgets to carry the merged ids into the next round
    merges = {}
    for k in range(n_merges):
        if len(ids) < 2:
            break
        pair = pair_solution(ids)
        merges[pair] = 256 + k
        out = merge_solution(ids, pair, 256 + k)
    return merges, (out if merges else list(ids))


def test_bpe_train_check():
    with pytest.raises(CheckFailed, match="not implemented"):
        check_bpe_train(stub)
    with pytest.raises(CheckFailed, match="tie rule"):  # Counter.most_common: ties go to the first seen pair
        check_bpe_train(bpe_train_with(pair_fn=pair_first_seen_tie))
    with pytest.raises(CheckFailed, match="merge [0-9]+ chose"):  # counts every other pair only (ties right)
        check_bpe_train(bpe_train_with(pair_fn=pair_every_other))
    with pytest.raises(CheckFailed, match="ids differ"):  # merges overlapping occurrences ('aaa' -> X X)
        check_bpe_train(bpe_train_with(merge_fn=merge_overlapping))
    with pytest.raises(CheckFailed, match="256 \\+ k"):  # numbers new tokens from 257
        check_bpe_train(bpe_train_with(first_id=257))
    with pytest.raises(CheckFailed, match="raised ValueError"):  # no stop when one token is left
        check_bpe_train(bpe_train_with(pair_fn=bpe.most_frequent_pair, stop=False))
    with pytest.raises(CheckFailed):
        check_bpe_train(bpe_train_merges_only_last_n)
    with pytest.raises(CheckFailed, match="pair \\(merges, ids\\)"):
        check_bpe_train(lambda ids, n: bpe_train_solution(ids, n)[0])
    assert check_bpe_train(bpe_train_solution)
    with pytest.raises(CheckFailed, match="write it yourself"):  # the check's reference is the answer
        check_bpe_train(reference_bpe_train)


def test_reference_bpe_train_is_the_package_trainer_on_one_chunk():
    """The check's reference equals bpe.train_bpe when the whole text is a single chunk."""
    import random

    rng = random.Random(0)
    for n in (50, 300):
        text = "".join(rng.choice("ab cd") for _ in range(n))
        merges, ids = reference_bpe_train(list(text.encode()), 12)
        assert merges == bpe.train_bpe(text, 12, pattern=r"[\s\S]+")
        assert ids == bpe.encode(text, merges, pattern=r"[\s\S]+")


# ---- chapter 1: bits per byte ------------------------------------------------------------------


def bpb_solution(losses, targets, token_bytes):
    nbytes = token_bytes[targets]
    return (losses * (nbytes > 0)).sum().item() / (math.log(2) * nbytes.sum().item())


def bpb_keeps_bos(losses, targets, token_bytes):
    return losses.sum().item() / (math.log(2) * token_bytes[targets].sum().item())


def bpb_nats(losses, targets, token_bytes):
    nbytes = token_bytes[targets]
    return (losses * (nbytes > 0)).sum().item() / nbytes.sum().item()


def bpb_per_token(losses, targets, token_bytes):  # mean loss in bits over mean bytes per token, BOS included
    return losses.mean().item() / math.log(2) / token_bytes[targets].float().mean().item()


def test_bits_per_byte_check():
    with pytest.raises(CheckFailed, match="not implemented"):
        check_bits_per_byte(stub)
    for wrong in (bpb_keeps_bos, bpb_nats, bpb_per_token):
        with pytest.raises(CheckFailed, match="BOS|expected value"):
            check_bits_per_byte(wrong)
    with pytest.raises(CheckFailed, match="float"):
        check_bits_per_byte(lambda *a: "2.5")
    assert check_bits_per_byte(bpb_solution)


# ---- chapter 2: causal attention ---------------------------------------------------------------


def attn_solution(q, k, v):
    T = q.size(-2)
    scores = q @ k.transpose(-2, -1) / q.size(-1) ** 0.5
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


def attn_no_mask(q, k, v):
    return (q @ k.transpose(-2, -1) / q.size(-1) ** 0.5).softmax(-1) @ v


def attn_diagonal_excluded(q, k, v):
    T = q.size(-2)
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-1)
    return (q @ k.transpose(-2, -1) / q.size(-1) ** 0.5).masked_fill(~mask, float("-inf")).softmax(-1) @ v


def attn_no_scale(q, k, v):
    T = q.size(-2)
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    return (q @ k.transpose(-2, -1)).masked_fill(~mask, float("-inf")).softmax(-1) @ v


def test_causal_attention_check():
    with pytest.raises(CheckFailed, match="not implemented"):
        check_causal_attention(stub)
    with pytest.raises(CheckFailed, match="values differ"):
        check_causal_attention(attn_no_mask)
    with pytest.raises(CheckFailed, match="NaN"):
        check_causal_attention(attn_diagonal_excluded)
    with pytest.raises(CheckFailed, match="values differ"):
        check_causal_attention(attn_no_scale)
    with pytest.raises(CheckFailed, match="shape"):
        check_causal_attention(lambda q, k, v: attn_solution(q, k, v).transpose(1, 2))
    assert check_causal_attention(attn_solution)
    with pytest.raises(CheckFailed, match="write it yourself"):  # the package's attention is the answer
        check_causal_attention(naive_attention)


# ---- chapter 2: parameter count ----------------------------------------------------------------


def count_solution(n_layer, n_embd, vocab_size, seq_len):
    d = n_embd
    per_layer = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d)
    return vocab_size * d + seq_len * d + n_layer * per_layer + 2 * d


def count_untied(n_layer, n_embd, vocab_size, seq_len):  # counts the tied head a second time
    return count_solution(n_layer, n_embd, vocab_size, seq_len) + vocab_size * n_embd


def count_no_bias_no_ln(n_layer, n_embd, vocab_size, seq_len):  # only the matrices and tables
    return (vocab_size + seq_len) * n_embd + 12 * n_layer * n_embd**2


def test_count_params_check():
    with pytest.raises(CheckFailed, match="not implemented"):
        check_count_params(stub)
    for wrong in (count_untied, count_no_bias_no_ln):
        with pytest.raises(CheckFailed, match="expected value"):
            check_count_params(wrong)
    with pytest.raises(CheckFailed, match="int"):
        check_count_params(lambda *a: "many")
    assert check_count_params(count_solution)


def test_gpt2_small_count():
    """The formula that matches the built model gives GPT-2 small's published 124M: 124,439,808."""
    assert count_solution(12, 768, 50257, 1024) == 124_439_808
    assert gpt_param_count(4, 256, 4096, 256) == count_solution(4, 256, 4096, 256) == 4_273_664


# ---- chapter 2: one training step of the 2019 recipe -------------------------------------------


def lr_schedule(step, t):
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - 1 - t.warmup_steps))
    return t.final_lr_frac + (1 - t.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def make_step(order=("clip", "lr", "step", "zero"), schedule=lr_schedule, always_clip=False):
    def my_train_step(model, optimizer, x, y, step, t):
        loss = model(x, y)
        loss.backward()
        for what in order:
            if what == "clip" and (t.grad_clip or always_clip):
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            elif what == "lr" and schedule is not None:
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * schedule(step, t)
            elif what == "step":
                optimizer.step()
            elif what == "zero":
                optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return my_train_step


def test_train_step_check():
    with pytest.raises(CheckFailed, match="not implemented"):
        check_train_step(stub)
    # forgets zero_grad: the gradients of every step add up
    with pytest.raises(CheckFailed, match="step 1: after your step, parameter"):
        check_train_step(make_step(order=("clip", "lr", "step")))
    # clips after optimizer.step: the update used the unclipped gradients
    with pytest.raises(CheckFailed, match="after your step, parameter"):
        check_train_step(make_step(order=("lr", "step", "clip", "zero")))
    # no schedule: every step at the peak rate
    with pytest.raises(CheckFailed, match="step 0: parameter group 0 has lr = 1 x its peak"):
        check_train_step(make_step(schedule=None))
    # the schedule one step ahead (step + 1) or one behind (warmup from 0)
    with pytest.raises(CheckFailed, match="not the schedule's value"):
        check_train_step(make_step(schedule=lambda step, t: lr_schedule(step + 1, t)))
    with pytest.raises(CheckFailed, match="not the schedule's value"):
        check_train_step(make_step(schedule=lambda step, t: step / t.warmup_steps if step < t.warmup_steps
                                   else lr_schedule(step, t)))
    # sets the learning rate after the optimizer step: the update of step k uses step k-1's rate
    with pytest.raises(CheckFailed, match="after your step, parameter"):
        check_train_step(make_step(order=("clip", "step", "lr", "zero")))
    # clips even when grad_clip = 0 (clip_grad_norm_ with max_norm 0 zeroes the gradient)
    with pytest.raises(CheckFailed, match="clipping off.*after your step, parameter"):
        check_train_step(make_step(always_clip=True))
    with pytest.raises(CheckFailed, match="return the loss"):
        check_train_step(lambda *a: make_step()(*a) and None)
    assert check_train_step(make_step())
    with pytest.raises(CheckFailed, match="write it yourself"):  # the package's step is the answer
        check_train_step(lambda model, opt, x, y, step, t: __import__("nanogpt_core.train", fromlist=["x"])
                         .train_step(model, model, opt, [(x, y)], step, t).loss)
