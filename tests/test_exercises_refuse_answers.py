"""Every exercise's check refuses an answer that calls the package function it asks the student to write.

For each of the course's exercises, two shortcuts a student could hand in: a one-line call of the
package's answer (imported as a chapter would import it), and the same call reached through an
aliased import (``importlib`` and a name built from strings, which no name-based test would see).
Both must fail with the watch's message. The honest solutions pass under the same watch in each
chapter's proof tests (tests/test_exercises_*.py), and the notebooks' check cells run them too.

Then the watch itself: a wrapped answer (functools.partial, a decorator, a copy of the code object),
the answer handed in as the function itself, a process started to compute elsewhere, and the profile
hook switched off: each refused; the check's own calls of the same functions are not.
"""

from __future__ import annotations

import functools
import importlib
import subprocess
import sys
import types

import pytest
import torch

from nanogpt_core.classroom import watch
from nanogpt_core.classroom.checks import CheckFailed
from nanogpt_core.classroom.checks import ablation_design, architecture, attention, baseline, compile as compile_checks
from nanogpt_core.classroom.checks import data, full_run, muon as muon_checks, tokens


def aliased(module: str, name: str):
    """The package function ``module.name``, reached without writing either name as an identifier."""
    return getattr(importlib.import_module("nanogpt_" + "core." + module), "".join(reversed(name[::-1])))


# ---- the shortcuts, one pair per exercise -----------------------------------------------------------
# Each entry: exercise -> (the check, a one-line answer, the same answer through an aliased import).


def _bpe(get):
    return lambda ids, n: get("classroom.checks.tokens", "reference_bpe_train")(ids, n)


def _mask(get):
    return lambda T, window: get("attention", "sliding_window_mask")(T, window)


def _ortho(get):
    return lambda G, steps=5: get("muon", "orthogonalize")(G, steps, "polar_express", torch.float32)


def _normuon(get):
    def answer(O, v, beta2):
        v = v.clone()
        return get("muon", "normuon_normalize")(O, v, beta2), v
    return answer


def _muon_step(get):
    def answer(W, G, buf, v, lr, momentum, weight_decay, beta2):
        W, buf, v = W.clone(), buf.clone(), v.clone()
        get("muon", "muon_update_")(W, G, buf, v, momentum, lr, weight_decay, beta2)
        return W, buf, v
    return answer


def _train_step(get):
    return lambda model, opt, x, y, step, t: get("train", "train_step")(model, model, opt, [(x, y)], step, t).loss.item()


def _count(get):
    def answer(n_layer, n_embd, vocab_size, seq_len):
        cfg = get("config", "ModelConfig")(vocab_size=vocab_size, n_layer=n_layer, n_head=1, n_embd=n_embd, seq_len=seq_len)
        return get("model", "GPT")(cfg).num_params()
    return answer


def _mfu(get):
    def answer(matmul_params, windows, seq_len, n_embd, batch_size, step_seconds, peak_flops):
        return get("cost", "mfu")(6 * matmul_params, batch_size * seq_len / step_seconds, peak_flops)
    return answer


def _bos_row(get):
    def answer(documents, capacity):
        buffer = get("loaders", "DocBuffer")()
        return get("loaders", "fill_row")(buffer, capacity, "bos", lambda: None)
    return answer


def _zero1(get):
    def answer(params, state, step, lr, betas, eps, weight_decay):
        get("optim", "ShardedAdamW")(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay).step()
    return answer


def _ablation(get):
    def answer(run):
        return get("classroom.checks.ablation_design", "_verdict")([0.1, -0.2, 0.3])
    return answer


SHORTCUTS = {
    "1.1 bpe_train": (tokens.check_bpe_train, _bpe),
    "1.2 bits_per_byte": (tokens.check_bits_per_byte,
                          lambda get: lambda losses, targets, tb: get("evaluate", "bits_per_byte")(losses, targets, tb)),
    "2.1 attention": (baseline.check_causal_attention, lambda get: lambda q, k, v: get("attention", "naive_attention")(q, k, v)),
    "2.1 attention (torch's SDPA)": (baseline.check_causal_attention, lambda get: lambda q, k, v: getattr(
        importlib.import_module("torch.nn." + "functional"), "scaled_dot_product_attention")(q, k, v, is_causal=True)),
    "2.2 count_params": (baseline.check_count_params, _count),
    "2.3 train_step": (baseline.check_train_step, _train_step),
    "3.1 online_softmax_update": (attention.check_online_softmax_update,
                                  lambda get: lambda state, s, v: get("classroom.checks.attention", "prefix_state")(s, v)),
    "3.2 sliding_window_mask": (attention.check_sliding_window_mask, _mask),
    "4.1 clip_rows": (compile_checks.check_clip_rows,
                      lambda get: lambda x, max_norm: get("classroom.checks.compile", "clip_rows_reference")(x, max_norm)),
    "4.3 measured_mfu": (compile_checks.check_measured_mfu, _mfu),
    "4.2 round_to_bf16": (compile_checks.check_round_to_bf16,
                          lambda get: lambda x: get("classroom.checks.compile", "bf16_round_reference")(x)),
    "4.4 bytes_moved": (compile_checks.check_bytes_moved, lambda get: lambda ops, tensors, outputs: get(
        "classroom.checks.compile", "bytes_moved_reference")(ops, tensors, outputs)),
    "5.1 polar_express": (muon_checks.check_polar_express, _ortho),
    "5.2 normuon": (muon_checks.check_normuon, _normuon),
    "5.3 cautious_decay": (muon_checks.check_cautious_weight_decay,
                           lambda get: lambda W, u, lr, wd: get("muon", "cautious_weight_decay")(W, u, lr, wd)),
    "5.4 muon_step": (muon_checks.check_muon_step, _muon_step),
    "6.1 apply_rope": (architecture.check_rope,
                       lambda get: lambda x, pos, base: get("classroom.checks.architecture", "rope_reference")(x, pos, base)),
    "6.1 apply_rope (the model's tables)": (architecture.check_rope, lambda get: lambda x, pos, base: get(
        "model", "rotary_tables")(int(pos.max()) + 1, x.size(-1), base)),
    "6.2 qk_norm_logits": (architecture.check_qk_norm_logits,
                           lambda get: lambda q, k: get("classroom.checks.architecture", "qk_norm_logits_reference")(q, k)),
    "6.3 value_embedding_gate": (architecture.check_value_embedding_gate, lambda get: lambda x, v, ve, w: get(
        "classroom.checks.architecture", "value_embedding_gate_reference")(x, v, ve, w)),
    "7.1 bos_aligned_row": (data.check_bos_aligned_row, _bos_row),
    "7.2 document_positions": (data.check_document_positions,
                               lambda get: lambda x, bos: get("classroom.checks.data", "reference_document_positions")(x, bos)),
    "8.1 bestfit_row": (data.check_bestfit_row,
                        lambda get: lambda buffer, cap: get("classroom.checks.data", "reference_bestfit_row")(buffer, cap)),
    "8.2 crop_windows": (data.check_crop_windows,
                         lambda get: lambda rows, w, d: get("classroom.checks.data", "reference_crop_windows")(rows, w, d)),
    "8.2 crop_windows (the lab's)": (data.check_crop_windows,
                                     lambda get: lambda rows, w, d: get("lab.packing", "crop_windows")(rows, w, d)),
    "9.1 tokens_and_steps": (full_run.check_tokens_and_steps,
                             lambda get: lambda n, ratio, batch: get("classroom.checks.full_run", "tokens_and_steps")(n, ratio, batch)),
    "9.2 memory_estimate": (full_run.check_memory_estimate,
                            lambda get: lambda model, micro, world, opt: get("plan", "memory_per_gpu")(model, micro, world, opt)),
    "9.3 zero1_adamw_step": (full_run.check_zero1_step, _zero1),
    "10.1 half_rope_tables": (ablation_design.check_half_rope_tables, lambda get: lambda seq_len, head_dim, base: get(
        "classroom.checks.ablation_design", "half_rope_tables")(seq_len, head_dim, base)),
    "10.1 half_rope_tables (the lab's variant)": (ablation_design.check_half_rope_tables, lambda get: lambda seq_len, head_dim,
                                                  base: get("lab.ablations_negative", "half_truncated_rotary_tables")(seq_len, head_dim, base)),
    "7.2 document_positions (the lab's)": (data.check_document_positions,
                                           lambda get: lambda x, bos: get("lab.bos_alignment", "document_positions")(x, bos)),
    "10.2 my_ablation": (ablation_design.check_ablation, _ablation),
}


def imported(module: str, name: str):
    """The plain import a chapter would write: ``from nanogpt_core.module import name``."""
    return getattr(importlib.import_module(f"nanogpt_core.{module}"), name)


def test_every_exercise_of_the_course_has_its_shortcuts_here():
    from nanogpt_core.classroom.notebooks import _check_functions

    graded = {fn for name, (_, fn) in _check_functions().items() if name not in ("check_most_frequent_pair", "check_merge")}
    assert graded == {check for check, _ in SHORTCUTS.values()}
    assert all(getattr(check, "answers", None) for check in graded), "every exercise's check names its answers"


@pytest.mark.parametrize("how", ["one line", "aliased import"])
@pytest.mark.parametrize("exercise", sorted(SHORTCUTS))
def test_an_answer_that_calls_the_package_answer_fails(exercise, how):
    check, make = SHORTCUTS[exercise]
    answer = make(imported if how == "one line" else aliased)
    with pytest.raises(CheckFailed, match="the package's answer to this exercise; write it yourself"):
        check(answer)


# ---- the watch itself, on exercise 5.3 ------------------------------------------------------------------

from nanogpt_core.muon import cautious_weight_decay  # noqa: E402  (the import a student would write)


def honest(W, u, lr, wd):
    return W - lr * (u + wd * ((u * W) >= 0) * W)


def test_the_honest_answer_passes_and_prints_its_tick(capsys):
    assert muon_checks.check_cautious_weight_decay(honest) is True
    assert capsys.readouterr().out.startswith("✓ cautious weight decay")


def test_the_package_function_handed_in_as_the_answer_fails():
    with pytest.raises(CheckFailed, match="the submitted function is nanogpt_core.muon.cautious_weight_decay"):
        muon_checks.check_cautious_weight_decay(cautious_weight_decay)
    with pytest.raises(CheckFailed, match="write it yourself"):
        muon_checks.check_cautious_weight_decay(functools.partial(cautious_weight_decay))


def test_wrapped_and_copied_answers_fail(capsys):
    def decorator(f):
        @functools.wraps(f)
        def inner(*args):
            return f(*args)
        return inner

    copy = types.FunctionType(cautious_weight_decay.__code__, cautious_weight_decay.__globals__, "my_copy")
    moved = types.FunctionType(cautious_weight_decay.__code__.replace(co_filename="/elsewhere/mine.py", co_firstlineno=1),
                               cautious_weight_decay.__globals__)
    answers = {"decorated": decorator(cautious_weight_decay),
               "partial inside": lambda W, u, lr, wd: functools.partial(cautious_weight_decay, W)(u, lr, wd),
               "a copy of its code": lambda W, u, lr, wd: copy(W, u, lr, wd),
               "its code moved to another file": lambda W, u, lr, wd: moved(W, u, lr, wd)}
    for what, answer in answers.items():
        with pytest.raises(CheckFailed, match="write it yourself"):
            muon_checks.check_cautious_weight_decay(answer)
    assert "✓" not in capsys.readouterr().out, "a refused answer's check prints no tick"


def test_an_answer_that_computes_in_another_process_fails():
    def elsewhere(W, u, lr, wd):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        return honest(W, u, lr, wd)

    with pytest.raises(CheckFailed, match="started a process"):
        muon_checks.check_cautious_weight_decay(elsewhere)


def test_an_answer_that_switches_the_watch_off_fails():
    def unwatched(W, u, lr, wd):
        previous = sys.getprofile()
        sys.setprofile(None)
        try:
            return cautious_weight_decay(W, u, lr, wd)
        finally:
            sys.setprofile(previous)

    with pytest.raises(CheckFailed, match="switch off the watch"):
        muon_checks.check_cautious_weight_decay(unwatched)
    assert sys.getprofile() is None and not watch.refusals(), "the watch leaves no hook behind"


def test_the_package_function_is_free_outside_a_check_and_inside_the_checks_own_reference():
    W, u = torch.randn(3, 3), torch.randn(3, 3)
    assert torch.equal(cautious_weight_decay(W, u, 0.1, 0.5), honest(W, u, 0.1, 0.5))
    # the check compares with cautious_weight_decay itself: that call is the check's, not the answer's
    assert muon_checks.check_cautious_weight_decay(honest) is True


def test_an_answer_that_calls_the_package_answer_in_a_thread_fails():
    import threading

    def threaded(W, u, lr, wd):
        out = []
        worker = threading.Thread(target=lambda: out.append(cautious_weight_decay(W, u, lr, wd)))
        worker.start()
        worker.join()
        return out[0]

    with pytest.raises(CheckFailed, match="write it yourself"):
        muon_checks.check_cautious_weight_decay(threaded)
