"""Checks for chapter 2 (the GPT-2 baseline): causal self-attention, the parameter count, a training step.

    check_causal_attention(fn)  fn(q, k, v) -> y, all (B, H, T, D); reference: attention.naive_attention
    check_count_params(fn)      fn(n_layer, n_embd, vocab_size, seq_len) -> int; reference: GPT(...).num_params()
    check_train_step(fn)        fn(model, optimizer, x, y, step, t) -> loss; reference: train.train_step

``check_train_step`` checks a process: two identical tiny GPTs with their AdamW optimizers
(``optim.build_optimizer``) take the same batches for several steps, one through the student's
step and one through the package's ``train_step``; after every step it compares the loss, the
learning rate of every parameter group, and every parameter.
"""

from __future__ import annotations

import copy
import math
import random

import torch

from ...attention import causal_attention, fa3_attention, naive_attention, sdpa_attention
from ...config import ModelConfig, TrainConfig
from ...model import GPT
from ...optim import build_optimizer
from ...train import train_step
from ..watch import answered_by
from . import Case, CheckFailed, call_student, check_function


@answered_by(naive_attention, sdpa_attention, fa3_attention, causal_attention,
             torch.nn.functional.scaled_dot_product_attention)
def check_causal_attention(student) -> bool:
    """Compare ``student(q, k, v)`` with the reference on random (B, H, T, D) inputs."""
    g = torch.Generator().manual_seed(random.randrange(2**31))
    cases = []
    for B, H, T, D in ((1, 1, 1, 8), (2, 3, 5, 4), (2, 4, 16, 32), (1, 2, 33, 64)):
        q, k, v = (torch.randn(B, H, T, D, generator=g) for _ in range(3))
        cases.append(Case(f"(B, H, T, D) = {(B, H, T, D)}", (q, k, v)))
    return check_function(student, naive_attention, cases, "causal attention", atol=1e-5, rtol=1e-4)


def gpt_param_count(n_layer: int, n_embd: int, vocab_size: int, seq_len: int) -> int:
    """The reference: build the 2019 GPT and count its parameters (a tied head counts once).

    Built on the CPU, so keep the sizes small (a few M parameters build in milliseconds).
    """
    cfg = ModelConfig(vocab_size=vocab_size, n_layer=n_layer, n_head=1, n_embd=n_embd, seq_len=seq_len)
    return GPT(cfg).num_params()["total"]


@answered_by(GPT, gpt_param_count)
def check_count_params(student) -> bool:
    """Compare ``student(n_layer, n_embd, vocab_size, seq_len)`` with the parameters of a built model."""
    rng = random.Random()
    cases = [
        Case("the toy model (4, 256, 4096, 256)", (4, 256, 4096, 256)),
        Case("GPT-2 small's vocabulary, narrow (2, 16, 50257, 1024)", (2, 16, 50257, 1024)),
        Case("one layer (1, 8, 10, 4)", (1, 8, 10, 4)),
    ]
    for _ in range(3):
        args = (rng.randint(1, 6), 8 * rng.randint(1, 12), rng.randint(257, 5000), rng.randint(4, 512))
        cases.append(Case(f"random {args}", args))

    def as_int(*args):
        got = student(*args)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, float) and got.is_integer():
            got = int(got)
        if not isinstance(got, int):
            raise CheckFailed(f"count_params must return an int, got {type(got).__name__}")
        return got

    return check_function(as_int, gpt_param_count, cases, "count_params")


def _train_step_cases(rng: random.Random) -> list[tuple[str, ModelConfig, TrainConfig]]:
    """(description, model, schedule) of each run the check makes; sizes are tiny, values fresh."""
    def model(n_layer, n_embd, vocab, seq_len):
        return ModelConfig(vocab_size=vocab, n_layer=n_layer, n_head=2, n_embd=n_embd, seq_len=seq_len)

    cases = [
        # clipping engages on every step (gradient norms of a fresh model are well above 0.05)
        ("warmup 3 of 8 steps, then cosine; clipping at 0.05", model(2, 32, 97, 16),
         TrainConfig(steps=8, warmup_steps=3, lr=1e-2, grad_clip=0.05, final_lr_frac=0.1)),
        ("no warmup, 5 steps of cosine to 0; clipping off (grad_clip=0)", model(1, 16, 61, 8),
         TrainConfig(steps=5, warmup_steps=0, lr=3e-3, grad_clip=0.0, final_lr_frac=0.0)),
    ]
    steps = rng.randint(6, 9)
    t = TrainConfig(steps=steps, warmup_steps=rng.randint(1, 3), lr=rng.choice([2e-3, 5e-3, 1e-2]),
                    grad_clip=rng.choice([0.1, 0.2]), final_lr_frac=rng.choice([0.0, 0.1, 0.2]),
                    weight_decay=rng.choice([0.0, 0.1]), seed=rng.randrange(2**31))
    what = (f"random: {t.steps} steps, warmup {t.warmup_steps}, lr {t.lr:g}, clip {t.grad_clip:g}, "
            f"final_lr_frac {t.final_lr_frac:g}")
    cases.append((what, model(rng.randint(1, 2), 16 * rng.randint(1, 2), rng.randint(50, 120), rng.choice([8, 16])), t))
    return cases


@answered_by(train_step)
def check_train_step(student) -> bool:
    """Train two identical tiny GPTs on the same batches, one with ``student(model, optimizer, x, y, step, t)``
    and one with the package's ``train_step``; after every step compare the loss, the learning rate of
    every parameter group and every parameter."""
    rng = random.Random()
    cases = _train_step_cases(rng)
    name = "train_step"
    for what, mcfg, t in cases:
        g = torch.Generator().manual_seed(rng.randrange(2**31))
        with torch.random.fork_rng():
            torch.manual_seed(rng.randrange(2**31))
            reference = GPT(mcfg)
        mine = copy.deepcopy(reference)
        ref_opt, my_opt = build_optimizer(reference, t), build_optimizer(mine, t)
        for step in range(t.steps):
            x = torch.randint(0, mcfg.vocab_size, (4, mcfg.seq_len), generator=g)
            y = torch.randint(0, mcfg.vocab_size, (4, mcfg.seq_len), generator=g)
            expected = train_step(reference, reference, ref_opt, [(x, y)], step, t).loss.item()
            where = f"{name}, case '{what}', step {step}"
            got = call_student(student, name, where, mine, my_opt, x.clone(), y.clone(), step, t)
            _compare_step(where, step, got, expected, mine, reference, my_opt, ref_opt)
    print(f"✓ {name}: loss, learning rates and parameters match the package's train_step after every step "
          f"of all {len(cases)} runs")
    return True


def _compare_step(where, step, got, expected, mine, reference, my_opt, ref_opt) -> None:
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            raise CheckFailed(f"{where}: return the loss as one number, got a tensor of shape {tuple(got.shape)}")
        got = got.item()
    if not isinstance(got, (int, float)) or isinstance(got, bool):
        raise CheckFailed(f"{where}: return the loss (a float or a 0-d tensor), got {type(got).__name__}")
    if not math.isclose(got, expected, rel_tol=1e-5, abs_tol=1e-5):
        hint = "" if step else " (return the mean cross-entropy of this batch, computed before the update)"
        raise CheckFailed(f"{where}: the loss {got:.5f} differs from the reference{hint}"
                          + (", so the parameters after the previous step were already off" if step else ""))
    for i, (mg, rg) in enumerate(zip(my_opt.param_groups, ref_opt.param_groups)):
        if not math.isclose(mg["lr"], rg["lr"], rel_tol=1e-6, abs_tol=1e-12):
            raise CheckFailed(f"{where}: parameter group {i} has lr = {mg['lr'] / mg['initial_lr']:.4g} x its "
                              "peak (initial_lr) after your step, which is not the schedule's value for this "
                              "step (step is 0-based)")
    for (pname, p), q in zip(mine.named_parameters(), reference.parameters()):
        if not torch.isfinite(p).all():
            raise CheckFailed(f"{where}: parameter '{pname}' holds NaN or inf after your step")
        if not torch.allclose(p, q, atol=1e-6, rtol=1e-5):
            err = (p - q).abs().max().item()
            hint = (" (the first step matched: what must be reset before the next step?)" if step == 1 else
                    " (loss and learning rate match: check the order forward, backward, clip, step)")
            raise CheckFailed(f"{where}: after your step, parameter '{pname}' differs from the reference "
                              f"(max abs error {err:.3g}){hint}")
