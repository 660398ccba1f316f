"""Checks for chapter 4 (torch.compile and bf16).

    check_clip_rows(fn)     fn(x, max_norm) -> x with every row rescaled to norm <= max_norm,
                            rows already within the bound unchanged, and NO graph break when
                            torch.compile captures it (torch._dynamo.explain(fn)(x, max_norm)
                            .graph_break_count == 0); reference: clip_rows_reference
    check_round_to_bf16(fn) fn(x) -> x (fp32) rounded to the nearest bf16 value, ties to even, NaN
                            kept NaN, returned as fp32, computed on the bits (no bf16 tensor may be
                            made); reference: bf16_round_reference, PyTorch's own conversion
    check_measured_mfu(fn)  fn(matmul_params, windows, seq_len, n_embd, batch_size, step_seconds,
                            peak_flops) -> MFU as a fraction; reference: cost.mfu with the FLOPs per
                            token of GPT.flops_per_token (6 per matmul weight + attention_flops_per_token)
    check_bytes_moved(fn)   fn(ops, tensors, outputs) -> (unfused, fused): the bytes a chain of
                            elementwise ops moves to and from memory run op by op, and run as one fused
                            kernel; reference: bytes_moved_reference, the memory-traffic model below
"""

from __future__ import annotations

import math
import numbers
import random

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ...attention import attention_flops_per_token, layer_windows
from ...config import ModelConfig
from ...cost import mfu
from ...model import GPT
from ..watch import answered_by
from . import Case, CheckFailed, call_student, check_function


def clip_rows_with_graph_break(x: torch.Tensor, max_norm: float) -> torch.Tensor:
    """The exercise's starting point: correct, but the Python `if` on a tensor breaks the graph."""
    norms = x.norm(dim=-1, keepdim=True)
    if (norms > max_norm).any():  # data-dependent control flow: Dynamo must stop here
        x = x * (max_norm / norms).clamp(max=1.0)
    return x


def clip_rows_reference(x: torch.Tensor, max_norm: float) -> torch.Tensor:
    norms = x.norm(dim=-1, keepdim=True)
    return x * (max_norm / norms).clamp(max=1.0)


def graph_breaks(fn, *args) -> tuple[int, list[str]]:
    """How many graph breaks torch.compile would meet in ``fn(*args)``, and why."""
    import torch._dynamo

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*args)
    return explanation.graph_break_count, [str(b.reason).splitlines()[0] for b in explanation.break_reasons]


@answered_by(clip_rows_reference)
def check_clip_rows(student) -> bool:
    """Values against the reference on random inputs, then: no graph break under torch.compile."""
    g = torch.Generator().manual_seed(random.randrange(2**31))
    cases = [
        Case("(4, 8), some rows above max_norm=1.0", (torch.randn(4, 8, generator=g), 1.0)),
        Case("(16, 32), every row within max_norm=100.0", (torch.randn(16, 32, generator=g), 100.0)),
        Case("(3, 5, 7), batched rows, max_norm=0.5", (torch.randn(3, 5, 7, generator=g), 0.5)),
    ]
    check_function(student, clip_rows_reference, cases, "clip rows")
    n, reasons = graph_breaks(student, *cases[0].args)
    if n > 0:
        raise CheckFailed(
            f"clip rows: the values are right, but torch.compile meets {n} graph break(s): {reasons[0]}. "
            "Express the condition with tensor ops instead of a Python `if` on a tensor."
        )
    print("✓ clip rows: no graph break")
    return True


# ---- fp32 -> bf16 rounding on the bits ----------------------------------------------------------


def bf16_round_reference(x: torch.Tensor) -> torch.Tensor:
    """PyTorch's fp32 -> bf16 conversion (round to nearest, ties to even, NaN kept NaN), back in fp32."""
    return x.to(torch.bfloat16).float()


def _from_bits(bits) -> torch.Tensor:
    """fp32 values from bit patterns given as unsigned 32-bit integers (a list or an int64 tensor)."""
    bits = torch.as_tensor(bits, dtype=torch.int64)
    return torch.where(bits >= 2**31, bits - 2**32, bits).to(torch.int32).view(torch.float32)


def _bits(x: torch.Tensor) -> torch.Tensor:
    """The bit patterns of fp32 values, as unsigned 32-bit integers in an int64 tensor."""
    return x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF


def _random_bits(g: torch.Generator, n: int, exponents: tuple[int, int], low=None) -> torch.Tensor:
    """n fp32 values: random sign, exponent field in [lo, hi], random mantissa (or the given low 16 bits)."""
    sign = torch.randint(0, 2, (n,), generator=g, dtype=torch.int64) << 31
    exponent = torch.randint(exponents[0], exponents[1] + 1, (n,), generator=g, dtype=torch.int64) << 23
    mantissa = torch.randint(0, 2**23, (n,), generator=g, dtype=torch.int64)
    if low is not None:
        pick = torch.randint(0, len(low), (n,), generator=g)
        mantissa = (mantissa & ~0xFFFF) | torch.as_tensor(low, dtype=torch.int64)[pick]
    return _from_bits(sign | exponent | mantissa)


def _bf16_cases(g: torch.Generator) -> list[Case]:
    full = (1, 254)  # every exponent of a normal number
    near_max = torch.randint(0x7F7F0000, 0x7F800000, (64,), generator=g, dtype=torch.int64)
    nan_bits = [0x7F800001, 0x7F808000, 0x7FBFFFFF, 0x7FC00000, 0x7FFFFFFF, 0xFF800001, 0xFFC00000, 0xFFFFFFFF]
    nan_bits += torch.randint(0x7F800001, 0x80000000, (24,), generator=g, dtype=torch.int64).tolist()
    tiny_ties = [0x00008000, 0x00018000, 0x80008000, 0x80018000, 0x00007FFF, 0x007F8000, 0x007FFFFF]
    return [
        Case("ordinary values (randn x 10^k), a (7, 13) matrix",
             (torch.randn(7, 13, generator=g) * 10.0 ** torch.randint(-6, 7, (7, 13), generator=g),)),
        Case("normal numbers of every size, both signs", (_random_bits(g, 4096, full),)),
        Case("exact ties (low 16 bits 0x8000, halfway between two bf16 values)",
             (_random_bits(g, 1024, (1, 253), low=[0x8000]),)),
        Case("one step either side of a tie (low 16 bits 0x7FFF or 0x8001)",
             (_random_bits(g, 1024, (1, 253), low=[0x7FFF, 0x8001]),)),
        Case("zeros and infinities, with ordinary values", (torch.tensor(
            [0.0, -0.0, float("inf"), -float("inf"), 1.0, -1.0, 3.0, 1.00390625, 1.01171875, -1.00390625]),)),
        Case("subnormals (exponent field 0), ties among them",
             (torch.cat([_random_bits(g, 512, (0, 0)), _from_bits(tiny_ties)]),)),
        Case("the largest finite values, both signs (the top ones round to inf)",
             (torch.cat([_from_bits(near_max), -_from_bits(near_max), _from_bits([0x7F7FFFFF, 0xFF7FFFFF])]),)),
        Case("NaN with every kind of payload, among ordinary values",
             (torch.cat([_from_bits(nan_bits), torch.randn(32, generator=g)]),)),
    ]


class _NoBF16(TorchDispatchMode):
    """Record the first operation that makes a bf16 tensor while the student's function runs."""

    def __init__(self):
        super().__init__()
        self.made = None

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # By default torch wraps __torch_dispatch__ in torch._dynamo.disable, which imports Dynamo (about 800
        # modules) at the first op: ~1 s, ~15 s under the watch's profile hook. Nothing here is compiled.
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        made_bf16 = any(isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16 for t in tree_leaves(out))
        if self.made is None and made_bf16:
            self.made = str(func.overloadpacket.__name__)
        return out


def _bf16_mismatch(x: torch.Tensor, got: torch.Tensor, expected: torch.Tensor, where: str) -> str | None:
    """What is wrong with ``got`` against ``expected`` (both fp32, same shape), in words; None if right."""
    x, got, expected = x.reshape(-1), got.reshape(-1), expected.reshape(-1)
    nan_in = torch.isnan(x)
    lost_nan = nan_in & ~torch.isnan(got)
    if lost_nan.any():
        i = int(lost_nan.nonzero()[0])
        return (f"{where}: {int(lost_nan.sum())} of {int(nan_in.sum())} NaN inputs came out as numbers (e.g. bits "
                f"{int(_bits(x[i:i + 1])):#010x} gave {got[i].item()}); NaN must stay NaN, whatever its payload")
    new_nan = ~nan_in & torch.isnan(got)
    if new_nan.any():
        i = int(new_nan.nonzero()[0])
        return f"{where}: {int(new_nan.sum())} numbers came out as NaN (e.g. input {x[i].item()!r})"
    gb, eb, xb = _bits(got), _bits(expected), _bits(x)
    wrong = (gb != eb) & ~nan_in
    if not wrong.any():
        return None
    n, i = int(wrong.sum()), int(wrong.nonzero()[0])
    example = f"e.g. input {x[i].item()!r} (bits {int(xb[i]):#010x}), your result {got[i].item()!r}"
    not_bf16 = wrong & ((gb & 0xFFFF) != 0)
    if not_bf16.any():
        j = int(not_bf16.nonzero()[0])
        return (f"{where}: {int(not_bf16.sum())} of {x.numel()} results are not bf16 values (their low 16 bits are "
                f"not all zero), e.g. input {x[j].item()!r} gave {got[j].item()!r}")
    if ((gb[wrong] ^ xb[wrong]) >> 31).any():
        return f"{where}: {n} results have the wrong sign ({example}); rounding never changes the sign"
    truncated = wrong & (gb == (xb & 0xFFFF0000))
    if int(truncated.sum()) == n:
        return (f"{where}: {n} of {x.numel()} results were cut toward zero (the low 16 bits dropped) where the "
                f"nearest bf16 value is the one above in magnitude ({example})")
    ties = wrong & ((xb & 0xFFFF) == 0x8000)
    if int(ties.sum()) == n:
        return (f"{where}: {n} exact ties went to the wrong neighbour ({example}); at a tie, round to the "
                "neighbour whose last kept bit is 0 (ties to even)")
    return f"{where}: {n} of {x.numel()} results are not the nearest bf16 value ({example})"


@answered_by(bf16_round_reference)
def check_round_to_bf16(student) -> bool:
    """Compare ``student(x)`` bit for bit with PyTorch's fp32 -> bf16 rounding: ordinary values, exact
    ties, zeros, infinities, subnormals, overflow to inf and NaN; no bf16 tensor may be made."""
    name = "round to bf16"
    g = torch.Generator().manual_seed(random.randrange(2**31))
    cases = _bf16_cases(g)
    for case in cases:
        (x,) = case.args
        expected = bf16_round_reference(x)
        where = f"{name}, case '{case.name}'"
        mode = _NoBF16()
        with mode:
            got = call_student(student, name, where, x.clone())
        if mode.made:
            raise CheckFailed(f"{where}: your function made a bf16 tensor (aten.{mode.made}); the exercise is to round "
                              "on the bits of the fp32 value (x.view(torch.int32)), not to ask PyTorch to convert")
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(f"{where}: expected a torch.Tensor, got {type(got).__name__}")
        if got.shape != x.shape:
            raise CheckFailed(f"{where}: shape {tuple(got.shape)}, expected {tuple(x.shape)} (one result per input)")
        if got.dtype != torch.float32:
            raise CheckFailed(f"{where}: dtype {got.dtype}; return the rounded values as torch.float32 "
                              "(an fp32 tensor holding bf16 values)")
        problem = _bf16_mismatch(x, got, expected, where)
        if problem:
            raise CheckFailed(problem)
    print(f"✓ {name}: all {len(cases)} cases match PyTorch's conversion bit for bit")
    return True


# ---- MFU from a measured step time -------------------------------------------------------------


def matmul_params(model: torch.nn.Module) -> int:
    """The weights that take part in matrix multiplies: every nn.Linear's weight (the head included)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def _mfu_case(rng: random.Random, name: str, cfg: ModelConfig, peak: float) -> Case:
    """A case built from a real model: the student gets its shape, the reference its own FLOPs count."""
    with torch.device("meta"):  # shapes only: no memory, no initialization cost
        model = GPT(cfg)
    batch = rng.choice((1, 2, 4, 8, 16, 32))
    step_seconds = rng.uniform(0.05, 3.0)
    args = (matmul_params(model), layer_windows(cfg), cfg.seq_len, cfg.n_embd, batch, step_seconds, peak)
    expected = mfu(model.flops_per_token(), batch * cfg.seq_len / step_seconds, peak)
    return Case(f"{name}: batch {batch} x seq_len {cfg.seq_len}, step {step_seconds:.3f} s", args, {"expected": expected})


@answered_by(mfu, attention_flops_per_token, GPT.flops_per_token)
def check_measured_mfu(student) -> bool:
    """Compare ``student(matmul_params, windows, seq_len, n_embd, batch_size, step_seconds, peak_flops)``
    with the package's MFU (cost.mfu of GPT.flops_per_token) for real model shapes."""
    rng = random.Random()
    cases = [
        _mfu_case(rng, "the toy model, SSSL windows", ModelConfig(window_pattern="SSSL"), 400e9),
        _mfu_case(rng, "the toy model, full context (gpt2 stage)", ModelConfig(), 400e9),
        _mfu_case(rng, "nanochat's d24 shape, SSSL, one 8xH100 node", ModelConfig(
            vocab_size=32768, n_layer=24, n_head=12, n_embd=1536, seq_len=2048, window_pattern="SSSL",
            bias=False, tie_embeddings=False), 8 * 989e12),
    ]
    for i in range(3):
        n_head = rng.randint(1, 4)
        cfg = ModelConfig(vocab_size=rng.randint(64, 2048), n_layer=rng.randint(1, 6), n_head=n_head,
                          n_embd=n_head * 8 * rng.randint(1, 4), seq_len=rng.choice((16, 64, 100, 256, 512)),
                          window_pattern="".join(rng.choice("SL") for _ in range(rng.randint(1, 4))),
                          short_window=rng.choice((0.125, 0.25, 0.5)))
        cases.append(_mfu_case(rng, f"random shape {i + 1} ({cfg.n_layer} layers, width {cfg.n_embd}, "
                                    f"pattern {cfg.window_pattern})", cfg, rng.choice((100e9, 312e12, 989e12))))

    def reference(*args, expected):
        return expected

    def as_fraction(*args, expected):
        got = student(*args)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (int, float)):
            raise CheckFailed(f"measured MFU must return a number (a fraction such as 0.42), got {type(got).__name__}")
        if expected and 99 < got / expected < 101:
            raise CheckFailed("measured MFU: return a fraction of the peak (0.42), not a percentage (42)")
        return float(got)

    return check_function(as_fraction, reference, cases, "measured MFU", atol=0.0, rtol=1e-9)


# ---- memory traffic of a chain of elementwise ops, unfused and fused -----------------------------
#
# The model: traffic to main memory only, every tensor moved in full (elements x bytes per element).
# Eager, each op is a kernel: it loads each distinct tensor it takes once and stores its result.
# Fused, the chain is one kernel: it loads each tensor that comes from outside the chain once and
# stores only the tensors the chain returns; the others live in registers. (A chain here has no
# dead op: every result is used by a later op or returned.)


def _size(tensors: dict, name: str) -> int:
    shape, dtype = tensors[name]
    return math.prod(shape) * dtype.itemsize


def bytes_moved_reference(ops, tensors, outputs) -> tuple[int, int]:
    """(unfused, fused) bytes for a chain ``ops = [(result, [inputs...]), ...]`` (see the model above)."""
    produced = {result for result, _ in ops}
    unfused = sum(sum(_size(tensors, t) for t in set(args)) + _size(tensors, result) for result, args in ops)
    loaded = {t for _, args in ops for t in args if t not in produced}
    fused = sum(_size(tensors, t) for t in loaded) + sum(_size(tensors, t) for t in set(outputs))
    return unfused, fused


def _gelu_chain(shape) -> tuple:
    """gelu_tanh of this chapter, op by op as eager PyTorch runs it, on an fp32 tensor of ``shape``."""
    f32 = torch.float32
    ops = [("cube", ["x"]), ("scaled_cube", ["cube"]), ("inner", ["x", "scaled_cube"]), ("arg", ["inner"]),
           ("t", ["arg"]), ("one_plus_t", ["t"]), ("half_x", ["x"]), ("y", ["half_x", "one_plus_t"])]
    return ops, {name: (shape, f32) for name in ["x", *(r for r, _ in ops)]}, ["y"]


def _residual_chain(B: int, T: int, d: int) -> tuple:
    """A bf16 linear layer's output plus its bias, added to the fp32 residual stream, and a bf16 copy of the sum."""
    bf, f32 = torch.bfloat16, torch.float32
    tensors = {"x": ((B, T, d), f32), "h": ((B, T, d), bf), "bias": ((d,), bf), "hb": ((B, T, d), bf),
               "y": ((B, T, d), f32), "y_bf16": ((B, T, d), bf)}
    ops = [("hb", ["h", "bias"]), ("y", ["x", "hb"]), ("y_bf16", ["y"])]
    return ops, tensors, ["y", "y_bf16"]


def _random_chain(rng: random.Random) -> tuple:
    """A random chain: inputs of full or broadcast shapes and mixed dtypes, ops taking 1-3 tensors
    (sometimes the same one twice), some intermediates returned too."""
    B, T, C = rng.randint(1, 8), rng.choice((16, 64, 100, 256)), rng.choice((8, 64, 96, 256))
    full, dtypes = (B, T, C), (torch.float32, torch.bfloat16, torch.float16)
    tensors = {}
    for i in range(rng.randint(1, 3)):
        shape = rng.choice((full, full, (C,), (T, 1), (1, T, C)))
        tensors[f"in{i}"] = (shape, rng.choice(dtypes + (torch.bool,) if i else dtypes))
    tensors["in0"] = (full, tensors["in0"][1])  # at least one input has the full shape
    ops, used = [], set()
    for k in range(rng.randint(2, 7)):
        available = list(tensors)
        args = [rng.choice(available) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.2:
            args.append(args[0])  # x * x: one tensor taken twice
        shape = tuple(torch.broadcast_shapes(*(tensors[a][0] for a in args)))
        tensors[f"t{k}"] = (shape, rng.choice(dtypes))
        ops.append((f"t{k}", args))
        used.update(args)
    results = [r for r, _ in ops]
    outputs = [r for r in results if r not in used]  # no dead op: every unused result is returned
    outputs += [r for r in results[:-1] if r not in outputs and rng.random() < 0.25]
    return ops, tensors, outputs


def _bytes_moved_hints(ops, tensors, outputs, got: tuple) -> str:
    """A hint if ``got`` equals what a common slip gives (and the right answer differs)."""
    right = bytes_moved_reference(ops, tensors, outputs)
    as_fp32 = {n: (shape, torch.float32) for n, (shape, _) in tensors.items()}
    out_shape = {n: (tensors[r][0], dt) for r, args in ops for n in args for dt in [tensors[n][1]]}
    slips = [
        ("every element counted as 4 bytes: each tensor's dtype sets its bytes per element",
         bytes_moved_reference(ops, as_fp32, outputs)),
        ("an op that takes one tensor twice (x * x) loads it once",
         (sum(sum(_size(tensors, t) for t in args) + _size(tensors, r) for r, args in ops), None)),
        ("a broadcast input (shape (C,) against (B, T, C)) moves its own elements, not the output's",
         bytes_moved_reference(ops, {**tensors, **out_shape}, outputs)),
        ("each eager op also stores its result", (sum(sum(_size(tensors, t) for t in set(a)) for _, a in ops), None)),
        ("the fused kernel keeps the chain's intermediates in registers: it stores only what the chain returns",
         (None, right[1] + sum(_size(tensors, r) for r, _ in ops if r not in outputs))),
        ("the fused kernel loads a tensor from outside the chain once, however many of its ops take it",
         (None, sum(_size(tensors, t) for _, a in ops for t in set(a) if t not in {r for r, _ in ops})
          + sum(_size(tensors, t) for t in set(outputs)))),
        ("the fused kernel also stores the returned intermediates, not only the last result",
         (None, right[1] - sum(_size(tensors, t) for t in set(outputs) if t != ops[-1][0]))),
    ]
    for why, (unfused, fused) in slips:
        for i, (wrong, value) in enumerate(((unfused, got[0]), (fused, got[1]))):
            if wrong is not None and wrong == value != right[i]:
                return f" (hint: {why})"
    return ""


@answered_by(bytes_moved_reference)
def check_bytes_moved(student) -> bool:
    """Compare ``student(ops, tensors, outputs)`` with the memory-traffic model on the chapter's gelu_tanh,
    a bf16 residual add, and random chains (broadcast shapes, mixed dtypes, repeated inputs)."""
    name = "bytes moved"
    rng = random.Random()
    B, T = rng.choice((4, 8, 16)), rng.choice((128, 256))
    cases = [Case(f"gelu_tanh on a ({B}, {T}, 1024) fp32 activation", _gelu_chain((B, T, 1024))),
             Case(f"bf16 linear output + bf16 bias + fp32 residual, and a bf16 copy ({B}, {T}, 256)",
                  _residual_chain(B, T, 256)),
             Case("an op that takes one tensor twice", (
                 [("sq", ["x", "x"]), ("y", ["sq", "w"])],
                 {"x": ((B, T, 64), torch.float32), "w": ((64,), torch.float32), "sq": ((B, T, 64), torch.float32),
                  "y": ((B, T, 64), torch.float32)}, ["y"]))]
    for i in range(4):
        ops, tensors, outputs = _random_chain(rng)
        cases.append(Case(f"random chain {i + 1}: {len(ops)} ops, inputs "
                          + ", ".join(f"{tuple(tensors[t][0])} {str(tensors[t][1]).removeprefix('torch.')}"
                                      for t in tensors if t.startswith("in"))
                          + f", {len(outputs)} returned", (ops, tensors, outputs)))
    for case in cases:
        ops, tensors, outputs = case.args
        expected = bytes_moved_reference(ops, tensors, outputs)
        where = f"{name}, case '{case.name}'"
        copy = ([(r, list(a)) for r, a in ops], dict(tensors), list(outputs))
        got = call_student(student, name, where, *copy)
        if not (isinstance(got, (tuple, list)) and len(got) == 2 and all(
                isinstance(v, numbers.Integral) or (isinstance(v, float) and v.is_integer()) for v in got)):
            raise CheckFailed(f"{where}: return (unfused_bytes, fused_bytes), two whole numbers; got {got!r:.80}")
        got = (int(got[0]), int(got[1]))
        for i, what in enumerate(("unfused (one kernel per op)", "fused (one kernel)")):
            if got[i] != expected[i]:
                raise CheckFailed(f"{where}: {what}: {got[i]:,} bytes is not the expected count"
                                  + _bytes_moved_hints(ops, tensors, outputs, got))
    print(f"✓ {name}: all {len(cases)} cases match the memory-traffic model")
    return True
