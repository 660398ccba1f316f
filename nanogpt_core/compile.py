"""The `compile` stage: torch.compile of the model, a fused optimizer step, and bf16 autocast
where the hardware computes bf16 natively (``hardware.use_bf16`` decides, once per run).

torch.compile captures the Python forward pass as a graph (TorchDynamo), derives the backward
graph ahead of time (AOTAutograd) and hands both to a compiler (Inductor) that fuses chains
of elementwise ops into single kernels: C++/OpenMP loops on a CPU, Triton kernels on a GPU.
The first call pays for compilation (tens of seconds on a CPU); later calls reuse the graph
as long as its *guards* hold: the same input shapes, dtypes, grad mode and Python constants.

How the training loop avoids recompiling:
- Static shapes. Every training batch is (batch_size, seq_len); ``dynamic=False`` says so,
  so no shape-generic (slower) graph is ever built.
- Evaluation runs under ``no_grad`` with ``reduction='none'``: a second graph. On a CPU it
  costs more to compile than toy-scale evaluation takes eagerly, so there evaluation uses
  the eager model (``eval_model``). On a GPU it uses the compiled model; a smaller last
  batch would add one more static graph, once.
- The schedule never enters a graph: the optimizer step is not compiled. Compiling AdamW's
  step needs the learning rate as a 0-d tensor (a Python float is baked into the graph as a
  constant, so every new schedule value would recompile), and on this course's 2-core CPU it
  took minutes to compile (~250 s under load) for a step no faster than the fused kernel.
  ``torch.optim.AdamW(fused=True)`` does the whole update in one kernel with no compilation
  (10 ms vs ~140 ms for the default multi-tensor step for the toy model, measured under load):
  the `compile` stage turns it on (optim.build_optimizer).
"""

from __future__ import annotations

import torch


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` with static shapes. The result shares parameters with ``model``."""
    from .attention import COMPILED_FORMULA_MAX_T
    from .hardware import print_once

    if next(model.parameters()).device.type == "cpu":
        print_once(f"compile: on a CPU, attention in a bf16 graph with T <= {COMPILED_FORMULA_MAX_T} runs as the "
                   "formula compiled by Inductor, which is faster there than SDPA")
    return torch.compile(model, dynamic=False)


def eval_model(model: torch.nn.Module, compiled: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model to evaluate with: the compiled one on a GPU, the eager one on a CPU (see above)."""
    return compiled if device.type == "cuda" else model
