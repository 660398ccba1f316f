"""Shared fixtures. Network access is blocked for the whole run (pytest-socket, see pyproject:
only loopback is allowed), so a test that tries to download anything fails."""

import os

import pytest

os.environ.setdefault("SPEEDRUN_SCALE", "toy")
os.environ.setdefault("SPEEDRUN_PROGRESS", "plain")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def small_data():
    """The toy corpus with a 512-token BPE: enough for tiny models in fast tests."""
    from nanogpt_core.data import toy_data

    return toy_data(vocab_size=512)


@pytest.fixture
def tiny_cfg():
    """A one-layer model that trains in well under a second per step on a CPU."""
    from nanogpt_core.config import stage_config

    return stage_config(
        "gpt2", "toy", vocab_size=512, n_layer=1, n_head=2, n_embd=32, seq_len=32,
        batch_size=8, steps=12, warmup_steps=2, eval_every=0, eval_tokens=1024, lr=3e-3,
    )
