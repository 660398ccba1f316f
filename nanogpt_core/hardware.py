"""The machine a run lands on: its device, what its CPU computes natively, and the precision.

bf16 autocast halves the bytes a matmul moves and, on hardware with bf16 units, doubles (or
more) its arithmetic rate: tensor cores on GPUs, AVX512-BF16 and AMX on recent x86 CPUs, the
BF16 extension on recent Arm cores. A CPU without them has no bf16 arithmetic at all: every
bf16 matmul is converted element by element and runs one to two orders of magnitude *slower*
than fp32 (measured for chapter 04: 0.8 against 126 GFLOP/s on an AVX2-only EPYC). So the
`compile` stage asks for bf16 as ``bf16="auto"``, and ``use_bf16`` grants it only where the
hardware computes it natively; elsewhere the run stays in fp32 and says why, once.
``bf16="on"`` forces it (to measure the slow path), ``"off"`` never uses it.
"""

from __future__ import annotations

import contextlib
import os
import platform
from functools import lru_cache
from pathlib import Path

import torch
import torch.distributed as dist


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: this process's CUDA GPU (torchrun's LOCAL_RANK) if one is visible, else the CPU."""
    if name == "auto":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device {name!r} is not a device name; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asks for a CUDA GPU, but this process sees none "
                         "(torch.cuda.is_available() is False); use device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: this process sees {torch.cuda.device_count()} CUDA GPU(s), "
                         f"numbered 0..{torch.cuda.device_count() - 1}; pick one of them, or auto")
    return device


def cpu_threads() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, a container's cpuset), lowered to
    the cgroup's CPU quota where one is set (``docker --cpus``), at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, -(-int(quota) // int(period)))
    return max(1, n)


def fit_threads() -> int:
    """Run PyTorch's CPU kernels on at most ``cpu_threads()`` threads (its default counts the machine's
    cores, not a container's quota); returns the thread count."""
    if torch.get_num_threads() > cpu_threads():
        torch.set_num_threads(cpu_threads())
    return torch.get_num_threads()


def process_count() -> int:
    """How many processes share this run: the size of the started process group, else 1."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


# The one-tensor collectives: torch 2.13 names them reduce_scatter_single and all_gather_single and
# deprecates reduce_scatter_tensor and all_gather_into_tensor, the only names torch 2.11 has.
reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _cpuinfo(*keys: str) -> str | None:
    """The value of the first /proc/cpuinfo line starting with one of ``keys`` (Linux), else None."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(keys):
                return line.split(":", 1)[1].strip()
    return None


def _cpu_flags() -> set[str]:
    return set((_cpuinfo("flags", "Features") or "").split())  # x86 / Arm


@lru_cache(maxsize=None)
def cpu_features() -> tuple[str, ...]:
    """The CPU's vector extensions that decide matmul speed, e.g. ('AVX2', 'AVX512', 'AVX512-BF16', 'AMX').

    An extension counts only where PyTorch's matmul library (oneDNN) will use it: with
    ``ONEDNN_MAX_CPU_ISA=AVX2`` a bf16-capable CPU reports what an AVX2-only one would.
    """
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        found = [name for name, has in (("AVX2", torch.cpu._is_avx2_supported()), ("AVX512", torch.cpu._is_avx512_supported()),
                                        ("AVX512-BF16", torch.cpu._is_avx512_bf16_supported()),
                                        ("AMX", torch.cpu._is_amx_tile_supported())) if has]
    else:
        found = [platform.machine()] + (["BF16"] if "bf16" in _cpu_flags() else [])
    capped = torch.backends.cpu.get_cpu_capability() == "AVX2" or not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if capped:  # oneDNN or ATen was told to stay below AVX512 (or has no bf16 path): so will every matmul
        found = [f for f in found if f not in ("AVX512", "AVX512-BF16", "AMX", "BF16")]
    return tuple(found)


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(does ``device`` compute bf16 natively, the reason in a few words)."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
        return ok, f"{torch.cuda.get_device_name(device)} {'has' if ok else 'has no'} bf16 tensor cores"
    if device.type != "cpu":
        return False, f"no native-bf16 check for device type {device.type!r}"
    features = cpu_features()
    ok = bool({"AVX512-BF16", "AMX", "BF16"} & set(features))
    return ok, f"this CPU ({', '.join(features) or 'no AVX2'}) {'computes' if ok else 'has no native'} bf16"


_printed: set[str] = set()


def print_once(message: str) -> None:
    """Print ``message`` the first time it is seen in this process (what a run chose, and why)."""
    if message not in _printed:
        _printed.add(message)
        print(message, flush=True)


def use_bf16(setting: str | bool, device: torch.device) -> bool:
    """Resolve a config's ``bf16`` ("auto", "on", "off") on ``device``; "auto" prints its choice once."""
    if setting in (True, "on"):
        return True
    if setting in (False, "off"):
        return False
    ok, why = native_bf16(device)
    print_once(f"precision: {'bf16 autocast' if ok else 'fp32'} ({why}; --bf16 on|off overrides)")
    return ok


def autocast_for(device: torch.device, bf16: bool):
    """A context factory: bf16 autocast when ``bf16`` is true, else a no-op."""
    if not bf16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def describe_hardware(device: torch.device) -> str:
    """What ran: the GPU name, or the CPU model, its thread count and its matmul extensions."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} x{int(os.environ.get('WORLD_SIZE', 1))}"
    cpu = _cpuinfo("model name") or platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads (CPU: {'/'.join(cpu_features()) or 'no AVX2'})"
