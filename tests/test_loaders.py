"""The document loaders: BOS-aligned rows, BestFit-Crop, greedy crop and greedy pad.

Documents in these tests carry their identity in their tokens: document i is
[BOS, K*i + 1, K*i + 2, ...], so every emitted token can be traced back to (document, offset)
without trusting the loader's own layout.
"""

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nanogpt_core.lab.packing import compare_policies, fineweb_like_lengths
from nanogpt_core.loaders import POLICIES, DocumentLoader
from nanogpt_core.packing_sim import simulate_packing

BOS, K = 0, 100_000
FAST = settings(max_examples=25, deadline=None)


def make_docs(lengths):
    return [[BOS] + [K * i + j for j in range(1, n)] for i, n in enumerate(lengths)]


def trace_row(row):
    """Split a row of tokens into (document, start column, length) segments, from the tokens alone."""
    starts = [c for c, t in enumerate(row) if t == BOS] + [len(row)]
    assert starts[0] == 0, "a row does not start with BOS"
    segments = []
    for a, b in zip(starts, starts[1:]):
        body = row[a + 1 : b]
        doc = body[0] // K if body else None  # a one-token piece (just BOS) cannot be identified
        assert all(t == K * doc + j for j, t in enumerate(body, 1)), "tokens out of order within a document"
        segments.append((doc, a, b - a))
    return segments


def full_rows(x, y):
    """The rows of T + 1 tokens behind (x, y), padding (-1 targets) cut off."""
    rows = []
    for xr, yr in zip(x.tolist(), y.tolist()):
        tokens = [xr[0]] + yr
        rows.append(tokens[: tokens.index(-1)] if -1 in tokens else tokens)
    return rows


lengths_st = st.lists(st.integers(1, 90), min_size=1, max_size=60)


@FAST
@given(lengths=lengths_st, T=st.integers(2, 48), B=st.integers(1, 4), buffer=st.integers(1, 12),
       policy=st.sampled_from(["bestfit", "greedy_crop"]))
def test_cropping_policies_fill_every_row_from_a_bos(lengths, T, B, buffer, policy):
    docs = make_docs(lengths)
    loader = DocumentLoader(docs, B, T, policy, buffer_size=buffer, bos_id=BOS, seed=1)
    for _ in range(3):
        x, y = loader.next_batch()
        assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.long
        assert (x[:, 0] == BOS).all(), "every row must start at a document's BOS"
        assert (y != -1).all(), "cropping policies never pad"
        assert torch.equal(x[:, 1:], y[:, :-1])


@FAST
@given(lengths=lengths_st, T=st.integers(2, 48), B=st.integers(1, 4), buffer=st.integers(1, 12),
       policy=st.sampled_from(POLICIES))
def test_every_token_comes_from_one_document_at_the_right_offset(lengths, T, B, buffer, policy):
    docs = make_docs(lengths)
    loader = DocumentLoader(docs, B, T, policy, buffer_size=buffer, bos_id=BOS, seed=2)
    for _ in range(3):
        x, y = loader.next_batch()
        for row, layout in zip(full_rows(x, y), loader.layout):
            segments = trace_row(row)
            assert len(segments) == len(layout)
            for (doc, start, length), piece in zip(segments, layout):
                assert (start, length) == (piece.start, piece.length)
                assert doc in (None, piece.index)
                assert row[start : start + length] == docs[piece.index][:length], "a piece is not its document's head"
                assert piece.doc_length == lengths[piece.index]


@FAST
@given(lengths=lengths_st, T=st.integers(2, 48), B=st.integers(1, 4), buffer=st.integers(1, 12),
       policy=st.sampled_from(POLICIES))
def test_accounting_adds_up(lengths, T, B, buffer, policy):
    loader = DocumentLoader(make_docs(lengths), B, T, policy, buffer_size=buffer, seed=3)
    pieces, pad_targets = [], 0
    for _ in range(4):
        x, y = loader.next_batch()
        pad_targets += int((y == -1).sum())
        pieces += [p for row in loader.layout for p in row]
    s = loader.stats
    assert s.rows == 4 * B and s.slots == 4 * B * (T + 1)
    assert s.placed + s.padding == s.slots
    assert s.placed == sum(p.length for p in pieces)
    assert s.cropped == sum(p.doc_length - p.length for p in pieces), "each document is placed whole or cropped"
    assert s.docs_used == len(pieces) and s.docs_cropped == sum(p.cropped for p in pieces)
    assert pad_targets == s.padding, "every padding position is a -1 target"
    if policy != "greedy_pad":
        assert s.utilization == 1.0 and s.padding == 0
    else:  # greedy pad crops only documents longer than a row
        assert all(p.length == T + 1 for p in pieces if p.cropped)


@FAST
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=40), T=st.integers(2, 32),
       world=st.integers(1, 3), policy=st.sampled_from(POLICIES))
def test_no_document_twice_in_an_epoch_and_ranks_are_disjoint(lengths, T, world, policy):
    if len(lengths) < world:
        lengths = lengths * world
    docs = make_docs(lengths)
    per_rank = []
    for rank in range(world):
        loader = DocumentLoader(docs, 2, T, policy, buffer_size=5, seed=4, rank=rank, world_size=world)
        seen = []
        for _ in range(6):
            loader.next_batch()
            seen += [(p.epoch, p.index) for row in loader.layout for p in row]
        assert len(seen) == len(set(seen)), "a document was used twice within an epoch"
        per_rank.append({i for e, i in seen if e == 0})
    for a in range(world):
        for b in range(a + 1, world):
            assert not per_rank[a] & per_rank[b], "two ranks got the same document"


def test_each_epoch_is_a_fresh_permutation():
    docs = make_docs([3] * 50)
    loader = DocumentLoader(docs, 1, 2, "greedy_crop", seed=5)  # one document per row, in stream order
    order = []
    for _ in range(100):
        loader.next_batch()
        order.append((loader.layout[0][0].epoch, loader.layout[0][0].index))
    first, second = [i for e, i in order if e == 0], [i for e, i in order if e == 1]
    assert sorted(first) == sorted(second) == list(range(50))
    assert first != second, "the second epoch was not reshuffled"


def test_the_same_seed_gives_the_same_batches_and_another_seed_does_not():
    docs = make_docs(random.Random(0).choices(range(1, 60), k=200))
    a, b, c = (DocumentLoader(docs, 4, 32, "bestfit", buffer_size=20, seed=s) for s in (7, 7, 8))
    batches = [[torch.cat(l.next_batch()) for _ in range(5)] for l in (a, b, c)]
    assert all(torch.equal(p, q) for p, q in zip(batches[0], batches[1]))
    assert not all(torch.equal(p, q) for p, q in zip(batches[0], batches[2]))


@FAST
@given(lengths=st.lists(st.integers(1, 70), min_size=2, max_size=40), T=st.integers(2, 40),
       policy=st.sampled_from(POLICIES), before=st.integers(0, 6), stream=st.booleans())
def test_resuming_continues_with_the_same_batches(lengths, T, policy, before, stream):
    docs = make_docs(lengths)
    source = (lambda: iter(docs)) if stream else docs
    make = lambda: DocumentLoader(source, 3, T, policy, buffer_size=6, seed=9, rank=1, world_size=2)
    run = make()
    for _ in range(before):
        run.next_batch()
    state = run.state_dict()
    expected = [run.next_batch() for _ in range(4)]
    resumed = make()
    resumed.load_state_dict(state)
    for (x, y), (rx, ry) in zip(expected, (resumed.next_batch() for _ in range(4))):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    assert resumed.stats == run.stats and resumed.state_dict() == run.state_dict()


def test_state_survives_a_checkpoint_round_trip(tmp_path):
    loader = DocumentLoader(make_docs([5, 40, 7, 90, 3] * 10), 2, 16, "bestfit", buffer_size=8)
    loader.next_batch()
    torch.save(loader.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    other = DocumentLoader(make_docs([5, 40, 7, 90, 3] * 10), 2, 16, "bestfit", buffer_size=8)
    other.load_state_dict(state)
    assert torch.equal(loader.next_batch()[0], other.next_batch()[0])


def reference_bestfit(lengths, capacity, buffer_size):
    """BestFit-Crop written as plainly as possible: a list buffer scanned in arrival order."""
    it, buffer, rows = iter(enumerate(lengths)), [], []
    while True:
        row, pos = [], 0
        while pos < capacity:
            while len(buffer) < buffer_size and (nxt := next(it, None)) is not None:
                buffer.append(nxt)
            if not buffer:  # all documents used: the last row ends early (padding)
                return rows + [row] if row else rows
            space = capacity - pos
            fits = [k for k, (_, n) in enumerate(buffer) if n <= space]
            if fits:
                k = max(fits, key=lambda k: (buffer[k][1], -k))  # the longest; the earliest among equals
            else:
                k = min(range(len(buffer)), key=lambda k: (buffer[k][1], k))  # crop the shortest
            i, n = buffer.pop(k)
            row.append((i, min(n, space)))
            pos += min(n, space)
        rows.append(row)


@FAST
@given(lengths=st.lists(st.integers(1, 120), min_size=1, max_size=200), T=st.integers(2, 64), buffer=st.integers(1, 30))
def test_bestfit_matches_a_plain_reference(lengths, T, buffer):
    _, layout = simulate_packing(lengths, T, "bestfit", buffer)
    assert layout == reference_bestfit(lengths, T + 1, buffer)


def test_bestfit_crops_less_than_greedy_on_web_like_lengths():
    stats = compare_policies(fineweb_like_lengths(5000, seed=1), 2048)
    assert min(stats["bestfit"]["utilization"], stats["greedy_crop"]["utilization"]) > 0.999  # the last row may end early
    assert stats["floor"] <= stats["bestfit"]["crop_fraction"] < stats["greedy_crop"]["crop_fraction"]
    assert stats["greedy_pad"]["crop_fraction"] == pytest.approx(stats["floor"])
    assert stats["greedy_pad"]["pad_fraction"] > 0.1


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: DocumentLoader([], 2, 8), "empty corpus"),
        (lambda: DocumentLoader(lambda: iter([]), 2, 8).next_batch(), "stream is empty"),
        (lambda: DocumentLoader([[BOS, 1], []], 2, 8).next_batch(), "has no tokens"),
        (lambda: DocumentLoader(make_docs([4, 4]), 2, 1), "seq_len=1"),
        (lambda: DocumentLoader(make_docs([4, 4]), 2, 8, "best"), "policy='best'"),
        (lambda: DocumentLoader(make_docs([4, 4]), 2, 8, buffer_size=0), "buffer_size"),
        (lambda: DocumentLoader([[5, 1, 2]], 2, 8, bos_id=BOS).next_batch(), "does not start with BOS"),
        (lambda: DocumentLoader(make_docs([4]), 2, 8, world_size=2, rank=1), "fewer than world_size"),
        (lambda: DocumentLoader(iter([[BOS]]), 2, 8), "sequence of token lists"),
        (lambda: DocumentLoader(lambda: iter([[BOS]]), 2, 8, rank=1, world_size=2).next_batch(), "too few for rank 1"),
    ],
)
def test_bad_input_gives_a_clear_error(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_training_runs_with_each_document_loader(small_data, tiny_cfg):
    from nanogpt_core.train import build_loader, train

    for loader in ("bos", "bestfit"):
        cfg = tiny_cfg.replace(loader=loader, steps=3)
        x, _ = build_loader(cfg, small_data).next_batch()
        assert (x[:, 0] == small_data.enc.encode_single_token("<|bos|>")).all()
        _, result = train(cfg, small_data, progress=False)
        assert result.steps == 3 and result.final_val_bpb > 0
