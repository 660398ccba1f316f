import pytest
import torch

from nanogpt_core.attention import naive_attention
from nanogpt_core.config import ModelConfig
from nanogpt_core.model import GPT


def hand_count(L, d, V, T, bias=True):
    """GPT-2 parameters by formula: embeddings + L blocks + final LayerNorm (head tied)."""
    ln = 2 * d if bias else d
    attn = d * 3 * d + (3 * d if bias else 0) + d * d + (d if bias else 0)
    mlp = d * 4 * d + (4 * d if bias else 0) + 4 * d * d + (d if bias else 0)
    return V * d + T * d + L * (2 * ln + attn + mlp) + ln


@pytest.mark.parametrize("L, d, h, V, T", [(1, 32, 2, 100, 16), (2, 64, 4, 512, 32), (4, 256, 4, 4096, 256)])
def test_parameter_count_matches_hand_count(L, d, h, V, T):
    model = GPT(ModelConfig(n_layer=L, n_embd=d, n_head=h, vocab_size=V, seq_len=T))
    counts = model.num_params()
    assert counts["total"] == hand_count(L, d, V, T)
    assert counts["total"] == sum(p.numel() for p in model.parameters())  # tied head counted once
    assert counts["embeddings"] == V * d + T * d
    assert counts["scaling"] == counts["total"] - counts["embeddings"]


def test_gpt2_124m_parameter_count():
    """The real GPT-2 small (vocab padded to 50304 as nanoGPT does): 124M parameters."""
    with torch.device("meta"):
        model = GPT(ModelConfig(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, seq_len=1024))
    assert model.num_params()["total"] == 124_439_808


def test_forward_shapes_and_loss():
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=50, seq_len=16)
    model = GPT(cfg)
    idx = torch.randint(0, 50, (3, 16))
    assert model(idx).shape == (3, 16, 50)
    loss = model(idx, idx)
    assert loss.shape == () and abs(loss.item() - torch.log(torch.tensor(50.0)).item()) < 0.5  # near uniform at init
    per_token = model(idx, idx, reduction="none")
    assert per_token.shape == (3, 16)
    assert torch.allclose(per_token.mean(), loss)


def test_ignored_targets_do_not_count():
    model = GPT(ModelConfig(n_layer=1, n_embd=32, n_head=2, vocab_size=50, seq_len=8))
    idx = torch.randint(0, 50, (2, 8))
    tgt = idx.clone()
    tgt[:, 4:] = -1
    assert torch.allclose(model(idx, tgt), model(idx[:, :4], idx[:, :4]))  # causal: prefix loss is independent of the rest


def test_model_is_causal():
    model = GPT(ModelConfig(n_layer=2, n_embd=32, n_head=2, vocab_size=50, seq_len=10)).eval()
    idx = torch.randint(0, 50, (1, 10))
    changed = idx.clone()
    changed[0, 6] = (idx[0, 6] + 1) % 50
    a, b = model(idx), model(changed)
    assert torch.allclose(a[0, :6], b[0, :6], atol=1e-6)
    assert not torch.allclose(a[0, 6:], b[0, 6:])


def test_too_long_sequence_is_a_clear_error():
    model = GPT(ModelConfig(n_layer=1, n_embd=32, n_head=2, vocab_size=50, seq_len=8))
    with pytest.raises(ValueError, match="longer than the model's seq_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_naive_attention_matches_explicit_loop():
    q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))
    out = naive_attention(q, k, v)
    for i in range(5):
        w = torch.softmax(q[:, :, i : i + 1] @ k[:, :, : i + 1].transpose(-1, -2) / 2.0, dim=-1)
        assert torch.allclose(out[:, :, i : i + 1], w @ v[:, :, : i + 1], atol=1e-6)


def test_flops_per_token_formula():
    L, d, V, T = 2, 64, 512, 32
    model = GPT(ModelConfig(n_layer=L, n_embd=d, n_head=4, vocab_size=V, seq_len=T))
    matmul_weights = L * 12 * d * d + V * d  # qkv + proj + mlp, and the (tied) head
    assert model.flops_per_token() == 6 * matmul_weights + L * 12 * d * T
