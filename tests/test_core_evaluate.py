import math

import pytest
import torch

from nanogpt_core.evaluate import bits_per_byte, evaluate, sample, val_batches


def test_bits_per_byte_hand_computed():
    # vocab: id 0 = BOS (0 bytes), id 1 = 1 byte, id 2 = 3 bytes
    token_bytes = torch.tensor([0, 1, 3])
    targets = torch.tensor([[1, 2, 0, 2]])
    losses = torch.tensor([[math.log(2), 2 * math.log(2), 5.0, math.log(2)]])  # nats
    # BOS target excluded: (1 + 2 + 1) bits over (1 + 3 + 3) bytes
    assert bits_per_byte(losses, targets, token_bytes) == pytest.approx(4 / 7)


def test_bits_per_byte_ignores_masked_targets():
    token_bytes = torch.tensor([0, 2])
    targets = torch.tensor([1, -1])
    losses = torch.tensor([math.log(2) * 4, 100.0])
    assert bits_per_byte(losses, targets, token_bytes) == pytest.approx(2.0)


def test_uniform_model_bpb(small_data, tiny_cfg):
    """A model that predicts uniformly has loss ln(V) per token, so bpb = log2(V) * tokens / bytes."""
    from nanogpt_core.model import GPT

    model = GPT(tiny_cfg.model)
    torch.nn.init.zeros_(model.ln_f.weight)  # zero features -> all logits 0 -> uniform
    T = tiny_cfg.model.seq_len
    out = evaluate(model, val_batches(small_data, 4, T, 8 * T), small_data.token_bytes)
    assert out["loss"] == pytest.approx(math.log(512), rel=1e-5)
    targets = torch.cat([y for _, y in val_batches(small_data, 4, T, 8 * T)])
    nbytes = small_data.token_bytes[targets]
    assert out["bpb"] == pytest.approx(math.log2(512) * (nbytes > 0).sum().item() / nbytes.sum().item(), rel=1e-5)


def test_val_batches_are_run_1s_rows(small_data):
    """BestFit-Crop rows of the val documents: every row starts at BOS and is full (no ignored
    target), eval_tokens // (B T W) batches, the same rows at every call; two processes read
    different documents."""
    from nanogpt_core.tokenizer import bos_id

    B, T, bos = 4, 32, bos_id(small_data.enc)
    batches = list(val_batches(small_data, B, T, 3 * B * T + 5))
    assert len(batches) == 3 and all(x.shape == (B, T) for x, _ in batches)
    assert all((x[:, 0] == bos).all() and (y >= 0).all() for x, y in batches)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, val_batches(small_data, B, T, 3 * B * T)))
    rank0, rank1 = (list(val_batches(small_data, B, T, 2 * B * T, rank=r, world_size=2)) for r in (0, 1))
    assert len(rank0) == len(rank1) == 1 and not torch.equal(rank0[0][0], rank1[0][0])
    with pytest.raises(ValueError, match="raise eval_tokens"):
        list(val_batches(small_data, B, T, B * T - 1))


def test_sample_is_deterministic_for_a_seed(small_data, tiny_cfg):
    from nanogpt_core.model import GPT

    torch.manual_seed(0)
    model = GPT(tiny_cfg.model)
    a = sample(model, small_data.enc, "ROMEO.", max_new_tokens=10, seed=3)
    b = sample(model, small_data.enc, "ROMEO.", max_new_tokens=10, seed=3)
    assert a == b and isinstance(a, str)
