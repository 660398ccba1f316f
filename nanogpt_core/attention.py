"""Causal self-attention kernels behind one function, with sliding windows.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + M) V
    M[i, j] = 0 if i - w <= j <= i else -inf          (w = the window, left context in tokens)

The window follows FlashAttention-3's ``window_size=(left, right)`` convention with
``(w, 0)``: query i sees key i itself and the ``w`` keys before it, ``w + 1`` keys in all.
``w >= T - 1`` (or ``None``) is plain causal attention.

Backends, fastest first:
- ``fa3``: FlashAttention-3 (Hopper GPUs, bf16/fp16), loaded only when it can run: from an
  installed ``flash_attn_interface``, else through the Hugging Face ``kernels`` package.
- ``sdpa``: PyTorch's ``scaled_dot_product_attention`` (a fused kernel on CPU and GPU);
  ``is_causal`` for full windows, an explicit boolean mask (built once, cached) otherwise.
- ``naive``: the formula written out, materializing the T x T score matrix as GPT-2 did in
  2019; the reference that the tests compare every fast path against.
``auto`` picks fa3 where it can run, else sdpa, except inside a compiled bf16 graph on a CPU
with short rows, where it hands the formula to the compiler (``formula_compiles_faster``).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from .config import ConfigError, ModelConfig
from .hardware import print_once

BACKENDS = ("naive", "sdpa", "fa3", "auto")

# ---- the masks -------------------------------------------------------------------------------


def is_full_window(window: int | None, T: int) -> bool:
    """True when a window of ``window`` left tokens covers every earlier key of a length-T row."""
    return window is None or window >= T - 1


def sliding_window_mask(T: int, window: int | None, device=None) -> torch.Tensor:
    """Boolean (T, T) mask, True where query i may attend key j: i - window <= j <= i."""
    i = torch.arange(T, device=device).unsqueeze(1)
    j = torch.arange(T, device=device).unsqueeze(0)
    mask = j <= i
    if not is_full_window(window, T):
        mask &= i - j <= window
    return mask


_mask_cache: dict[tuple, torch.Tensor] = {}


def cached_mask(T: int, window: int | None, device) -> torch.Tensor:
    """``sliding_window_mask`` built once per (T, window, device) and reused by every layer/step."""
    if torch.compiler.is_compiling():  # inside a compiled graph the mask is built (and folded) there
        return sliding_window_mask(T, window, device)
    key = (T, window, str(device))
    if key not in _mask_cache:
        _mask_cache[key] = sliding_window_mask(T, window, device)
    return _mask_cache[key]


# ---- the backends ----------------------------------------------------------------------------


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """Causal attention, the math written out. q, k, v: (B, H, T, D) -> (B, H, T, D)."""
    T = q.size(-2)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, H, T, T)
    allowed = sliding_window_mask(T, window, q.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(dim=-1) @ v


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """PyTorch's fused kernel: is_causal for a full window, else the cached window mask."""
    T = q.size(-2)
    if is_full_window(window, T):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=cached_mask(T, window, q.device))


def fa3_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """FlashAttention-3. Takes (B, H, T, D) like the others; FA3 itself wants (B, T, H, D)."""
    kernel, reason = load_fa3()
    if kernel is None:
        raise RuntimeError(f"FlashAttention-3 cannot run here: {reason}")
    left = -1 if is_full_window(window, q.size(-2)) else window  # -1: unlimited
    y = kernel.flash_attn_func(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True, window_size=(left, 0)
    )
    y = y[0] if isinstance(y, tuple) else y  # some FA3 builds also return the log-sum-exp
    return y.transpose(1, 2)


# ---- choosing a backend ----------------------------------------------------------------------

# Inside a compiled graph on a CPU, in bf16, for rows up to this length, "auto" runs the
# formula (naive_attention) and lets Inductor fuse the scale, mask and softmax between two bf16
# batched matmuls. PyTorch's CPU flash kernel ran no faster in bf16 than in fp32 at these shapes,
# so the compiled formula won: 1.3-2.0x at T = 256, about even at T = 512, 0.6x at T = 1024 on an
# AMD EPYC, and 1.3x / about even / 0.34-0.48x on an Intel Xeon with AMX (2026-12-01) (2 threads,
# 4096 tokens, 4 heads of 64, forward + backward, torch 2.13;
# ``bench.compiled_attention_crossover`` measures it on your machine). The formula keeps the
# T x T probabilities for the backward pass: 16 MiB per layer at toy scale.
COMPILED_FORMULA_MAX_T = 256


def formula_compiles_faster(q: torch.Tensor) -> bool:
    """True when "auto" should run the formula for these queries: inside a compiled graph, on a
    CPU, in bf16, with T <= COMPILED_FORMULA_MAX_T. Everywhere else the fused kernel is faster."""
    return (
        torch.compiler.is_compiling()
        and q.device.type == "cpu"
        and q.dtype == torch.bfloat16
        and q.size(-2) <= COMPILED_FORMULA_MAX_T
    )


_fa3: tuple | None = None  # (kernel module or None, reason), decided once per process


def load_fa3():
    """(FA3 module, "") when FlashAttention-3 can run on this machine, else (None, why not).

    Nothing is imported unless a Hopper GPU (compute capability 9.x) is visible, so CPU
    machines never touch the FA3 packages.
    """
    global _fa3
    if _fa3 is not None:
        return _fa3
    if not torch.cuda.is_available():
        _fa3 = (None, "no CUDA GPU is visible")
    elif torch.cuda.get_device_capability()[0] != 9:
        name = torch.cuda.get_device_name()
        _fa3 = (None, f"FA3 kernels are built for Hopper (sm90); this GPU is {name}")
    else:
        try:
            import flash_attn_interface  # a local FA3 build

            _fa3 = (flash_attn_interface, "")
        except ImportError:
            try:
                os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
                from kernels import get_kernel
            except ImportError:
                _fa3 = (None, "neither flash_attn_interface nor the `kernels` package is installed: "
                              "pip install -e '.[gpu]'")
            else:
                try:
                    _fa3 = (_hub_fa3(get_kernel).flash_attn_interface, "")
                except Exception as err:  # the hub is unreachable and the kernel not cached, or a build mismatch
                    _fa3 = (None, f"loading FA3 from the Hugging Face hub ({FA3_HUB_REPO}) through `kernels` failed "
                                  f"({type(err).__name__}: {err})")
    return _fa3


# The FA3 build nanochat's run 1 used on Hopper (nanochat/flash_attention.py), fetched from the
# Hugging Face hub by the `kernels` package on first use and cached (HF_HUB_OFFLINE=1 then works).
FA3_HUB_REPO = "varunneal/flash-attention-3"


def _hub_fa3(get_kernel):
    """The hub's FA3 module. Recent `kernels` releases want a revision and an explicit opt-in for a
    publisher outside their trusted list: installing the `gpu` extra is that opt-in."""
    try:
        return get_kernel(FA3_HUB_REPO, revision="main", trust_remote_code=True)
    except TypeError:  # an older `kernels` without these arguments
        return get_kernel(FA3_HUB_REPO)


def require_fa3(attn_backend: str, scale: str, allow_sdpa: bool = False) -> str:
    """The attention kernel a run will use; a ConfigError for a `speedrun`-scale run that would fall
    back to SDPA without ``allow_sdpa`` (so a three-hour run on eight GPUs does not start slow by accident).

    Only the fused backends ("auto", "fa3") are checked: the `gpt2` stage names "naive" on purpose.
    """
    backend = resolve_backend(attn_backend)  # prints the choice, once per process
    if scale == "speedrun" and attn_backend in ("auto", "fa3") and backend != "fa3" and not allow_sdpa:
        raise ConfigError(
            f"FlashAttention-3 cannot run here ({load_fa3()[1]}), so this speedrun-scale run would use PyTorch SDPA "
            "with explicit sliding-window masks: slower than run 1 (nanochat measured FA3 at about 9% more tokens/s "
            "than FA2, and SDPA has no native sliding window), so the planner's hours would not hold. On H100/H200, "
            "pip install -e '.[gpu]'; to train on SDPA anyway, pass --allow-sdpa"
        )
    return backend


def resolve_backend(requested: str) -> str:
    """The backend that will run for ``requested`` on this machine.

    For "auto" and "fa3" the choice (and, for a fallback, the reason) is printed once per process.
    """
    if requested not in BACKENDS:
        raise ConfigError(f"attn_backend={requested!r} is not allowed; choose one of {', '.join(map(repr, BACKENDS))}")
    if requested in ("naive", "sdpa"):  # named explicitly: nothing to choose, nothing to say
        return requested
    kernel, reason = load_fa3()
    if kernel is not None:
        print_once("attention backend: fa3 (FlashAttention-3, Hopper)")
        return "fa3"
    if requested == "fa3":
        print_once(f"attention backend: fa3 was asked for but cannot run ({reason}); using sdpa instead")
    else:
        print_once(f"attention backend: sdpa (PyTorch scaled_dot_product_attention; FA3 unavailable: {reason})")
    return "sdpa"


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "naive", window: int | None = None
) -> torch.Tensor:
    """Causal attention with the named backend and left window. q, k, v: (B, H, T, D) -> (B, H, T, D).

    ``backend`` is "naive", "sdpa", "fa3" or "auto" (resolved per call: ``resolve_backend``, or
    the formula where ``formula_compiles_faster``). FA3 runs only bf16/fp16 CUDA tensors; anything
    else takes the sdpa path, which computes the same keys.
    """
    if backend == "auto" and formula_compiles_faster(q):
        backend = "naive"
    backend = resolve_backend(backend)  # "auto" and "fa3" become what can run here
    if backend == "naive":
        return naive_attention(q, k, v, window)
    if backend == "fa3":
        if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
            return fa3_attention(q, k, v, window)
        if not torch.compiler.is_compiling():
            print_once(f"attention: FA3 needs bf16/fp16 CUDA tensors, got {q.dtype} on {q.device.type}; using sdpa")
    return sdpa_attention(q, k, v, window)


# ---- windows per layer -----------------------------------------------------------------------


def layer_windows(cfg: ModelConfig) -> list[int]:
    """Each layer's left window in tokens: ``window_pattern`` tiled over the layers.

    L = ``seq_len`` (full context), S = ``round(short_window * seq_len)``; the last layer is
    always L, so the final representation sees the whole row. E.g. "SSSL" with 6 layers and
    seq_len 256, short_window 0.5: [128, 128, 128, 256, 128, 256].
    """
    pattern = cfg.window_pattern.upper()
    if not pattern or set(pattern) - {"S", "L"}:
        bad = sorted(set(pattern) - {"S", "L"})
        raise ConfigError(
            f"window_pattern={cfg.window_pattern!r} must be a non-empty string of 'S' (short window) and "
            f"'L' (long, full context) characters, e.g. 'SSSL'" + (f"; {bad} are not allowed" if bad else "")
        )
    long, short = cfg.seq_len, max(1, round(cfg.short_window * cfg.seq_len))
    windows = [long if pattern[i % len(pattern)] == "L" else short for i in range(cfg.n_layer)]
    windows[-1] = long
    return windows


def attention_flops_per_token(cfg: ModelConfig) -> int:
    """Training FLOPs per token of QK^T and AV over all layers, with each layer's window.

    Per layer and query: 2 matmuls x 2 FLOPs x T_eff x d forward, x3 for forward + backward,
    = 12 * T_eff * d, d = n_head * head_dim. T_eff = min(window, seq_len) as in nanochat's
    ``estimate_flops``: the full context for L layers (PaLM's convention, not the causal
    average), the window for S layers. It ignores the query's own key (the +1 of the (w, 0)
    convention) and the shorter rows at the start of the sequence, as nanochat does.
    """
    return sum(12 * cfg.n_head * cfg.head_dim * min(w, cfg.seq_len) for w in layer_windows(cfg))
