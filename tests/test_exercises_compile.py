"""The chapter-4 checks fail on a stub and on plausible wrong answers, and pass on the solution:
the graph-break fix (the original, an .item() break, wrong values), the rounding of fp32 to bf16
(truncation, ties away from zero, NaN lost, a bf16 tensor made, flushed subnormals, a lost sign), the
measured MFU (2N instead of 6N, no attention term, per sequence instead of per token, windows ignored, a
percentage) and the bytes a chain of elementwise ops moves (repeats, dtypes, stores, broadcasting, what a
fused kernel loads and stores)."""

import struct

import pytest
import torch

from nanogpt_core.attention import layer_windows
from nanogpt_core.classroom.checks import CheckFailed
from nanogpt_core.classroom.checks.compile import (bf16_round_reference, bytes_moved_reference, check_bytes_moved,
                                                   check_clip_rows, check_measured_mfu, check_round_to_bf16,
                                                   clip_rows_with_graph_break, graph_breaks, matmul_params)


def solution(x, max_norm):  # the chapter's (clip_rows_reference's own code would be refused as the package's answer)
    row_norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x * torch.clamp(max_norm / row_norm, max=1.0)


def stub(x, max_norm):
    raise NotImplementedError


def clips_every_row(x, max_norm):  # no graph break, but scales rows that were within the bound up
    return x * (max_norm / x.norm(dim=-1, keepdim=True))


def item_break(x, max_norm):  # right values, but .item() leaves the graph
    norms = x.norm(dim=-1, keepdim=True)
    if norms.max().item() > max_norm:
        return x * (max_norm / norms).clamp(max=1.0)
    return x


def test_original_has_a_graph_break_and_the_solution_none():
    x = torch.randn(4, 8)
    assert graph_breaks(clip_rows_with_graph_break, x, 1.0)[0] >= 1
    assert graph_breaks(solution, x, 1.0)[0] == 0


def test_check_passes_on_solution():
    assert check_clip_rows(solution)


@pytest.mark.parametrize("wrong,message", [
    (stub, "not implemented"),
    (clip_rows_with_graph_break, "graph break"),
    (item_break, "graph break"),
    (clips_every_row, "values differ"),
])
def test_check_fails_on_wrong_answers(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check_clip_rows(wrong)


def test_check_rejects_clamping_elements_and_the_global_norm():
    def clamps_elements(x, max_norm):  # bounds each entry, not each row's norm
        return x.clamp(-max_norm, max_norm)

    def global_norm(x, max_norm):  # one norm over the whole tensor, as clip_grad_norm_ does for gradients
        return x * (max_norm / x.norm()).clamp(max=1.0)

    for wrong in (clamps_elements, global_norm):
        with pytest.raises(CheckFailed, match="values differ"):
            check_clip_rows(wrong)


# ---- measured MFU ------------------------------------------------------------------------------


def mfu_solution(matmul_params, windows, seq_len, n_embd, batch_size, step_seconds, peak_flops):
    attention = sum(12 * n_embd * min(w, seq_len) for w in windows)
    flops_per_token = 6 * matmul_params + attention
    return flops_per_token * batch_size * seq_len / step_seconds / peak_flops


def mfu_forward_only(matmul_params, windows, seq_len, n_embd, batch_size, step_seconds, peak_flops):  # 2N
    attention = sum(4 * n_embd * min(w, seq_len) for w in windows)
    return (2 * matmul_params + attention) * batch_size * seq_len / step_seconds / peak_flops


def mfu_without_attention(matmul_params, windows, seq_len, n_embd, batch_size, step_seconds, peak_flops):
    return 6 * matmul_params * batch_size * seq_len / step_seconds / peak_flops


def mfu_per_sequence(matmul_params, windows, seq_len, n_embd, batch_size, step_seconds, peak_flops):
    attention = sum(12 * n_embd * min(w, seq_len) for w in windows)  # FLOPs per token, times sequences per second
    return (6 * matmul_params + attention) * batch_size / step_seconds / peak_flops


def mfu_ignores_windows(matmul_params, windows, seq_len, n_embd, batch_size, step_seconds, peak_flops):
    attention = len(windows) * 12 * n_embd * seq_len  # every layer charged the full context
    return (6 * matmul_params + attention) * batch_size * seq_len / step_seconds / peak_flops


def mfu_stub(*args):
    raise NotImplementedError


def mfu_as_percent(*args):
    return 100 * mfu_solution(*args)


def test_mfu_check_passes_on_solution(capsys):
    assert check_measured_mfu(mfu_solution)
    assert "✓ measured MFU" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,message", [
    (mfu_stub, "not implemented"),
    (mfu_forward_only, "not the expected value"),
    (mfu_without_attention, "not the expected value"),
    (mfu_per_sequence, "not the expected value"),
    (mfu_ignores_windows, "not the expected value"),
    (mfu_as_percent, "not a percentage"),
])
def test_mfu_check_fails_on_wrong_answers(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check_measured_mfu(wrong)


def test_mfu_reference_is_the_package_formula():
    from nanogpt_core.cost import mfu
    from nanogpt_core.config import stage_config
    from nanogpt_core.model import GPT

    cfg = stage_config("flash-attention", "toy").model
    model = GPT(cfg)
    args = (matmul_params(model), layer_windows(cfg), cfg.seq_len, cfg.n_embd, 16, 0.5, 400e9)
    expected = mfu(model.flops_per_token(), 16 * cfg.seq_len / 0.5, 400e9)
    assert abs(mfu_solution(*args) - expected) < 1e-12 * expected


# ---- rounding fp32 to bf16 on the bits ------------------------------------------------------------------

def bf16_solution(x):
    bits = x.view(torch.int32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & -0x10000
    return torch.where(torch.isnan(x), x, rounded.view(torch.float32))


def bf16_in_python(x):  # one element at a time with struct, as C's round_to_nearest_even does it
    out = []
    for value in x.reshape(-1).tolist():
        (u,) = struct.unpack("<I", struct.pack("<f", value))
        if value != value:
            out.append(value)
            continue
        u = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000) & 0xFFFFFFFF
        out.append(struct.unpack("<f", struct.pack("<I", u))[0])
    return torch.tensor(out, dtype=torch.float32).reshape(x.shape)


def bf16_stub(x):
    raise NotImplementedError


def bf16_truncates(x):  # drops the low 16 bits: rounds toward zero
    return (x.view(torch.int32) & -0x10000).view(torch.float32)


def bf16_ties_away(x):  # adds half a step: right except at exact ties, which all go up in magnitude
    return torch.where(torch.isnan(x), x, ((x.view(torch.int32) + 0x8000) & -0x10000).view(torch.float32))


def bf16_forgets_nan(x):  # a NaN whose low bits carry turns into inf (or a small number, for negative NaNs)
    bits = x.view(torch.int32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & -0x10000).view(torch.float32)


def bf16_asks_pytorch(x):
    return x.to(torch.bfloat16).float()


def bf16_asks_pytorch_by_another_name(x):
    return x.bfloat16().to(torch.float32)


def bf16_returns_float64(x):
    return bf16_solution(x).double()


def bf16_flushes_subnormals(x):  # as hardware with flush-to-zero would
    y = bf16_solution(x)
    return torch.where(x.abs() < torch.finfo(torch.float32).tiny, torch.zeros_like(y).copysign(x), y)


def bf16_loses_sign(x):
    return bf16_solution(x.abs())


def bf16_identity(x):
    return x.clone()


def test_bf16_check_passes_on_the_solution_and_on_a_python_loop(capsys):
    assert check_round_to_bf16(bf16_solution)
    assert check_round_to_bf16(bf16_in_python)
    assert "✓ round to bf16" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,message", [
    (bf16_stub, "not implemented"),
    (bf16_truncates, "cut toward zero"),
    (bf16_ties_away, "ties to even"),
    (bf16_forgets_nan, "NaN must stay NaN"),
    (bf16_asks_pytorch, "made a bf16 tensor"),
    (bf16_asks_pytorch_by_another_name, "made a bf16 tensor"),
    (bf16_returns_float64, "dtype torch.float64"),
    (bf16_flushes_subnormals, "case 'subnormals"),
    (bf16_loses_sign, "wrong sign"),
    (bf16_identity, "not bf16 values"),
])
def test_bf16_check_fails_on_wrong_answers(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check_round_to_bf16(wrong)


def test_bf16_reference_rounds_ties_to_even_and_keeps_nan():
    x = torch.tensor([1.00390625, 1.01171875, -1.00390625, 3.4e38, float("inf")])  # ties: 0x3F808000, 0x3F818000
    assert bf16_round_reference(x).tolist() == [1.0, 1.015625, -1.0, float("inf"), float("inf")]
    assert torch.equal(bf16_round_reference(x), bf16_in_python(x))
    nan = torch.tensor([0x7F800001, 0x7FFFFFFF], dtype=torch.int64).to(torch.int32).view(torch.float32)
    assert bf16_round_reference(nan).isnan().all()


# ---- the bytes a chain of elementwise ops moves, op by op and fused ----------------------------------------

GELU_OPS = [("cube", ["x"]), ("scaled_cube", ["cube"]), ("inner", ["x", "scaled_cube"]), ("arg", ["inner"]),
            ("t", ["arg"]), ("one_plus_t", ["t"]), ("half_x", ["x"]), ("y", ["half_x", "one_plus_t"])]


def nbytes(tensors, name):
    shape, dtype = tensors[name]
    return torch.Size(shape).numel() * dtype.itemsize


def bytes_solution(ops, tensors, outputs):
    produced = {r for r, _ in ops}
    unfused = sum(nbytes(tensors, r) + sum(nbytes(tensors, t) for t in set(a)) for r, a in ops)
    outside = {t for _, a in ops for t in a if t not in produced}
    return unfused, sum(nbytes(tensors, t) for t in outside) + sum(nbytes(tensors, t) for t in set(outputs))


def bytes_stub(ops, tensors, outputs):
    raise NotImplementedError


def bytes_counts_repeats(ops, tensors, outputs):  # x * x loads x twice
    unfused = sum(nbytes(tensors, r) + sum(nbytes(tensors, t) for t in a) for r, a in ops)
    return unfused, bytes_solution(ops, tensors, outputs)[1]


def bytes_all_fp32(ops, tensors, outputs):  # 4 bytes per element whatever the dtype
    return bytes_solution(ops, {n: (s, torch.float32) for n, (s, _) in tensors.items()}, outputs)


def bytes_no_stores(ops, tensors, outputs):  # eager ops only load
    unfused, fused = bytes_solution(ops, tensors, outputs)
    return unfused - sum(nbytes(tensors, r) for r, _ in ops), fused


def bytes_fused_stores_everything(ops, tensors, outputs):
    unfused, fused = bytes_solution(ops, tensors, outputs)
    return unfused, fused + sum(nbytes(tensors, r) for r, _ in ops if r not in outputs)


def bytes_fused_stores_last_only(ops, tensors, outputs):
    return bytes_solution(ops, tensors, [ops[-1][0]])


def bytes_fused_loads_per_use(ops, tensors, outputs):
    produced = {r for r, _ in ops}
    loads = sum(nbytes(tensors, t) for _, a in ops for t in set(a) if t not in produced)
    return bytes_solution(ops, tensors, outputs)[0], loads + sum(nbytes(tensors, t) for t in set(outputs))


def bytes_broadcast_at_output_size(ops, tensors, outputs):  # a (C,) bias counted as large as the result
    grown = dict(tensors)
    for r, a in ops:
        for t in a:
            grown[t] = (tensors[r][0], tensors[t][1])
    return bytes_solution(ops, grown, outputs)


def bytes_swapped(ops, tensors, outputs):
    unfused, fused = bytes_solution(ops, tensors, outputs)
    return fused, unfused


def test_bytes_check_passes_on_the_solution(capsys):
    assert check_bytes_moved(bytes_solution)
    assert "✓ bytes moved" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,message", [
    (bytes_stub, "not implemented"),
    (bytes_counts_repeats, "takes one tensor twice .* loads it once"),
    (bytes_all_fp32, "4 bytes"),
    (bytes_no_stores, "also stores its result"),
    (bytes_fused_stores_everything, "stores only what the chain returns"),
    (bytes_fused_stores_last_only, "also stores the returned intermediates"),
    (bytes_fused_loads_per_use, "loads a tensor from outside the chain once"),
    (bytes_broadcast_at_output_size, "broadcast input"),
    (bytes_swapped, "not the expected count"),
    (lambda ops, tensors, outputs: None, "two whole numbers"),
])
def test_bytes_check_fails_on_wrong_answers(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check_bytes_moved(wrong)


def test_bytes_reference_counts_gelu_by_hand():
    """gelu_tanh: 8 ops, 10 tensor loads (x three times, two ops take two) and 8 stores op by op;
    fused: x loaded once, y stored once. 9x less traffic."""
    tensors = {n: ((16, 256, 1024), torch.float32) for n in ["x", *(r for r, _ in GELU_OPS)]}
    one = 16 * 256 * 1024 * 4
    assert bytes_moved_reference(GELU_OPS, tensors, ["y"]) == (18 * one, 2 * one)
