import math

import pytest
import torch

from nanogpt_core.evaluate import bits_per_byte, evaluate, sample


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
    val = small_data.stream("val")
    out = evaluate(model, val, small_data.token_bytes, batch_size=4, max_tokens=512)
    assert out["loss"] == pytest.approx(math.log(512), rel=1e-5)
    targets = val[1 : 1 + 512]
    expected = math.log2(512) * (small_data.token_bytes[targets] > 0).sum().item() / small_data.token_bytes[targets].sum().item()
    assert out["bpb"] == pytest.approx(expected, rel=1e-5)


def test_sample_is_deterministic_for_a_seed(small_data, tiny_cfg):
    from nanogpt_core.model import GPT

    torch.manual_seed(0)
    model = GPT(tiny_cfg.model)
    a = sample(model, small_data.enc, "ROMEO.", max_new_tokens=10, seed=3)
    b = sample(model, small_data.enc, "ROMEO.", max_new_tokens=10, seed=3)
    assert a == b and isinstance(a, str)
