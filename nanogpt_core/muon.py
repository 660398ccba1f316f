"""Muon: steepest descent under the spectral norm, for the hidden matrices of the transformer.

For a weight matrix W with gradient G, the step that decreases the linearized loss <G, dW>
the most among all steps of spectral norm at most eta is

    dW = -eta * U V^T        where G = U S V^T is the (reduced) SVD,

i.e. the gradient with every singular value set to 1 (its "polar factor"). Muon applies this
to the Nesterov momentum of the gradient and computes U V^T without an SVD, with a few
matrix-multiply iterations X <- a X + (b A + c A^2) X, A = X X^T (an odd polynomial in the
singular values, leaving U and V alone):

- Newton-Schulz quintic (Keller Jordan's original Muon): the same (a, b, c) every step;
  singular values end in a band around 1 (roughly 0.7 to 1.2), not at 1.
- Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv 2505.16932): a different, optimal
  (a, b, c) at each step; after 5 steps the singular values sit much closer to 1.

One Muon step for a matrix W (rows x cols), as in nanochat's optim.py:

    b  <- beta b + (1 - beta) G                      momentum (beta warms up 0.85 -> 0.95)
    G' = (1 - beta) G + beta b                       Nesterov
    O  = orthogonalize(G')                           Polar Express, 5 steps
    v  <- beta2 v + (1 - beta2) mean(O^2)            NorMuon: per row (per column if wide)
    O  <- O / sqrt(v), rescaled to the Frobenius norm O had before
    W  <- W - lr_eff (O + wd * 1[O * W >= 0] * W)    cautious weight decay
    lr_eff = lr * sqrt(max(1, rows / cols))

"A matrix" is what run 1 has: its attention projects q, k and v with three (d, d) matrices, so
they are orthogonalized apart, each at lr. The course's GPT keeps q|k|v in one (3d, d) layer
(c_attn, as GPT-2); handing that to Muon whole would orthogonalize the three together and step
at sqrt(3) lr. ``matrix_shape=(d, d)`` makes Muon see the three matrices run 1 sees. The
momentum warmup (beta) and the decay of wd are the training loop's (schedules.py), as the
learning rate's.

The distributed path (world_size > 1) gives each rank whole matrices: gradients of same-shape
matrices are stacked, padded to a multiple of the world size and reduce-scattered; each rank
updates the matrices it owns (and keeps their optimizer state only); the new values are
all-gathered.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .hardware import all_gather_single, process_count, reduce_scatter_single

# The original Muon quintic: chosen to maximize the slope at 0, not to converge to 1.
NEWTON_SCHULZ_COEFFS = (3.4445, -4.7750, 2.0315)

# Polar Express, 5 steps, safety factor 2e-2, cushion 2 (arXiv 2505.16932; the values
# nanochat's optim.py uses).
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

METHODS = ("polar_express", "newton_schulz")


def iteration_coeffs(method: str = "polar_express", steps: int = 5) -> list[tuple[float, float, float]]:
    """The (a, b, c) of each of ``steps`` iterations of ``method``."""
    if method == "newton_schulz":
        return [NEWTON_SCHULZ_COEFFS] * steps
    if method == "polar_express":
        if steps > len(POLAR_EXPRESS_COEFFS):
            raise ValueError(f"Polar Express coefficients exist for at most {len(POLAR_EXPRESS_COEFFS)} steps, got {steps}")
        return list(POLAR_EXPRESS_COEFFS[:steps])
    raise ValueError(f"method={method!r} is not known; choose one of {METHODS}")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on CUDA (tensor cores; the iteration is stable in bf16), fp32 elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def newton_schulz_step(X: torch.Tensor, a: float, b: float, c: float) -> torch.Tensor:
    """One quintic step X <- a X + (b A + c A^2) X with A = X X^T (for wide or square X).

    On the SVD X = U S V^T this maps every singular value s to a s + b s^3 + c s^5.
    """
    A = X @ X.mT
    return a * X + (b * A + c * (A @ A)) @ X


def singular_value_map(s: torch.Tensor, method: str = "polar_express", steps: int = 5) -> torch.Tensor:
    """What ``steps`` iterations do to a singular value s in [0, 1] (a scalar polynomial)."""
    for a, b, c in iteration_coeffs(method, steps):
        s = a * s + b * s**3 + c * s**5
    return s


def orthogonalize(
    G: torch.Tensor, steps: int = 5, method: str = "polar_express", dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Approximately U V^T for G = U S V^T; works on a matrix (m, n) or a stack (..., m, n).

    G is first divided by its Frobenius norm (times 1.02 for Polar Express, as nanochat does,
    a safety margin for bf16 rounding), so every singular value lies in [0, 1]. A tall matrix
    iterates on the smaller Gram matrix A = X^T X, with X <- a X + X (b A + c A^2).
    ``dtype``: bf16 by default on CUDA, fp32 on CPU. The result has that dtype. The operations
    are run 1's, in its order (nanochat 348fbb3, optim.py), so that in bf16 they round as its do.
    """
    if G.ndim < 2:
        raise ValueError(f"orthogonalize needs a matrix or a stack of matrices, got shape {tuple(G.shape)}")
    coeffs = iteration_coeffs(method, steps)
    X = G.to(dtype or default_dtype(G.device))
    safety = 1.02 if method == "polar_express" else 1.0
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * safety + 1e-6)
    if X.size(-2) > X.size(-1):  # tall
        for a, b, c in coeffs:
            A = X.mT @ X
            X = a * X + X @ (b * A + c * (A @ A))
        return X
    for a, b, c in coeffs:
        X = newton_schulz_step(X, a, b, c)
    return X


def normuon_normalize(O: torch.Tensor, second_moment: torch.Tensor, beta2: float | torch.Tensor) -> torch.Tensor:
    """NorMuon (arXiv 2510.05491): equalize the update's scale across neurons.

    v <- beta2 v + (1 - beta2) mean(O^2) per row (per column when the matrix is wide), in
    place in ``second_moment`` (shape (..., rows, 1) or (..., 1, cols)); returns O / sqrt(v)
    rescaled to the Frobenius norm of O, in O's dtype. The statistics are fp32; the operations
    are run 1's, in its order.
    """
    red_dim = -1 if O.size(-2) >= O.size(-1) else -2
    n = O.size(red_dim)
    mean_sq = O.float().square().mean(dim=red_dim, keepdim=True)
    norm_before = (mean_sq.sum(dim=(-2, -1), keepdim=True) * n).sqrt()
    second_moment.lerp_(mean_sq.to(second_moment.dtype), 1 - beta2)
    step = second_moment.clamp_min(1e-10).rsqrt()
    norm_after = ((mean_sq * n) * step.float().square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    return O * (step * (norm_before / norm_after.clamp_min(1e-10))).to(O.dtype)


def cautious_weight_decay(W: torch.Tensor, update: torch.Tensor, lr, wd) -> torch.Tensor:
    """W - lr (update + wd * 1[update * W >= 0] * W): decay only where it agrees with the update.

    (arXiv 2510.12402.) Returns a new tensor; the optimizer does the same in place.
    """
    mask = (update * W) >= 0
    return W - lr * (update + wd * mask * W)


def shape_lr_factor(rows: int, cols: int) -> float:
    """sqrt(max(1, rows / cols)): tall matrices take a larger step (nanochat's factor)."""
    return math.sqrt(max(1.0, rows / cols))


def muon_update_(
    param: torch.Tensor,
    grad: torch.Tensor,
    momentum_buffer: torch.Tensor,
    second_moment: torch.Tensor | None,
    momentum,
    lr,
    weight_decay,
    beta2,
    steps: int = 5,
    method: str = "polar_express",
    dtype: torch.dtype | None = None,
) -> None:
    """One Muon step, in place, on a matrix or a stack of same-shape matrices (see the module doc).

    ``lr`` is the group's learning rate; the shape factor is applied here. ``second_moment``
    None turns NorMuon off. ``grad`` is overwritten. The hyper-parameters become 0-d tensors of the
    update's dtype, and the operations follow run 1's fused step in its order (nanochat 348fbb3,
    optim.muon_step_fused): in bf16 the update rounds where run 1's rounds.
    """
    momentum = torch.tensor(momentum, dtype=torch.float32).to(grad.dtype)
    momentum_buffer.lerp_(grad, 1 - momentum)
    g = grad.lerp_(momentum_buffer, momentum)
    O = orthogonalize(g, steps, method, dtype)
    if second_moment is not None:
        O = normuon_normalize(O, second_moment, torch.tensor(beta2, dtype=torch.float32).to(O.dtype))
    lr = torch.tensor(lr * shape_lr_factor(param.size(-2), param.size(-1)), dtype=torch.float32).to(O.dtype)
    weight_decay = torch.tensor(weight_decay, dtype=torch.float32).to(O.dtype)
    mask = (O * param) >= 0
    param.sub_(lr * O + lr * weight_decay * param * mask)


class Muon(torch.optim.Optimizer):
    """Muon for 2-D weight matrices, single- or multi-process: a plain update rule.

    Per group: ``lr`` (0.02), ``momentum`` (0.95), ``beta2`` (NorMuon, 0.95; None turns it off),
    ``weight_decay`` (cautious), ``ns_steps`` (5), ``method`` ("polar_express" or "newton_schulz")
    and ``matrix_shape``: None (each parameter is one matrix) or (rows, cols), each parameter then
    being a stack of such matrices along its rows, each orthogonalized on its own; a fused q|k|v
    projection of shape (3d, d) with ``matrix_shape=(d, d)`` is updated exactly as run 1 updates
    its three separate (d, d) matrices. Every step reads ``lr``, ``momentum`` and ``weight_decay``
    from the groups as they are: the training loop schedules them (``schedules.apply_schedules``).
    ``dtype`` is the orthogonalization's precision (default: bf16 on CUDA, fp32 on CPU).

    With ``world_size > 1`` (inside an initialized process group) ``step()`` averages the
    gradients of its own parameters across processes itself: do not all-reduce them before.
    ``self_synced_params`` lists them for the training loop.
    """

    def __init__(
        self, params, lr: float = 0.02, momentum: float = 0.95, beta2: float | None = 0.95,
        weight_decay: float = 0.0, ns_steps: int = 5, method: str = "polar_express",
        matrix_shape: tuple[int, int] | None = None, dtype: torch.dtype | None = None, world_size: int | None = None,
    ):
        iteration_coeffs(method, ns_steps)  # validates both
        if lr <= 0 or not 0 <= momentum < 1 or (beta2 is not None and not 0 <= beta2 < 1):
            raise ValueError(f"need lr > 0, 0 <= momentum < 1, 0 <= beta2 < 1; got {lr}, {momentum}, {beta2}")
        defaults = dict(kind="muon", lr=lr, momentum=momentum, beta2=beta2, weight_decay=weight_decay,
                        ns_steps=ns_steps, method=method, matrix_shape=matrix_shape)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                self.matrices(p, group)  # raises for a parameter Muon cannot take
        self.dtype = dtype
        if world_size is None:
            world_size = process_count()
        self.world_size = world_size
        self.rank = dist.get_rank() if world_size > 1 else 0
        self.self_synced_params = [p for g in self.param_groups for p in g["params"]] if world_size > 1 else []

    @staticmethod
    def matrices(p: torch.Tensor, group: dict) -> tuple[int, int, int]:
        """(count, rows, cols): ``p`` as the stack of matrices Muon orthogonalizes one by one."""
        if p.ndim != 2:
            raise ValueError(f"Muon takes matrices only; got a parameter of shape {tuple(p.shape)}, give it to AdamW")
        rows, cols = group["matrix_shape"] or p.shape
        if cols != p.shape[1] or p.shape[0] % rows:
            raise ValueError(f"matrix_shape {(rows, cols)} does not tile a parameter of shape {tuple(p.shape)}")
        return p.shape[0] // rows, rows, cols

    def _state_for(self, p: torch.Tensor, group: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
            if group["beta2"] is not None:  # NorMuon: one second moment per row (per column if wide) of each matrix
                count, rows, cols = self.matrices(p, group)
                shape = (count, rows, 1) if rows >= cols else (count, 1, cols)
                state["second_moment"] = torch.zeros(shape, dtype=torch.float32, device=p.device)
        return state["momentum_buffer"], state.get("second_moment")

    def _update_stack(self, group: dict, params: list[torch.Tensor], grads: torch.Tensor) -> torch.Tensor:
        """Update ``params`` (same shape) with stacked ``grads``; returns the stacked new values."""
        matrices = (len(params), *self.matrices(params[0], group))  # (params, matrices per param, rows, cols)
        states = [self._state_for(p, group) for p in params]
        stacked = torch.stack([p.detach() for p in params]).view(matrices)
        buf = torch.stack([s[0] for s in states]).view(matrices)
        v = torch.stack([s[1] for s in states]) if group["beta2"] is not None else None
        muon_update_(stacked, grads.view(matrices), buf, v, group["momentum"], group["lr"], group["weight_decay"],
                     group["beta2"] or 0.0, steps=group["ns_steps"], method=group["method"], dtype=self.dtype)
        for i, (b, s) in enumerate(states):
            b.copy_(buf[i].view_as(b))
            if s is not None:
                s.copy_(v[i])
        return stacked.view(len(params), *params[0].shape)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("Muon.step takes no closure")
        for group in self.param_groups:
            by_shape: dict[tuple, list[torch.Tensor]] = {}
            for p in group["params"]:
                if self.world_size > 1 or p.grad is not None:
                    by_shape.setdefault(tuple(p.shape), []).append(p)
            for params in by_shape.values():
                if self.world_size == 1:
                    new = self._update_stack(group, params, torch.stack([p.grad for p in params]))
                    torch._foreach_copy_(params, list(new.unbind(0)))
                else:
                    self._step_distributed(group, params)

    def _step_distributed(self, group: dict, params: list[torch.Tensor]) -> None:
        """Reduce-scatter the stacked gradients, update the owned matrices, all-gather."""
        W, K = self.world_size, len(params)
        chunk = -(-K // W)  # ceil(K / W): matrices per rank; the stack is padded to chunk * W
        p0 = params[0]
        grads = torch.zeros(chunk * W, *p0.shape, dtype=p0.dtype, device=p0.device)
        for i, p in enumerate(params):
            if p.grad is None:
                raise RuntimeError("distributed Muon needs a gradient for every parameter on every rank")
            grads[i].copy_(p.grad)
        my_grads = torch.empty(chunk, *p0.shape, dtype=p0.dtype, device=p0.device)
        reduce_scatter_single(my_grads, grads)  # SUM: gloo has no AVG reduce-scatter
        my_grads /= W
        start = self.rank * chunk
        owned = params[start : start + chunk]
        new = torch.zeros_like(my_grads)
        if owned:
            new[: len(owned)] = self._update_stack(group, owned, my_grads[: len(owned)])
        gathered = grads  # reuse the gradient buffer for the gathered values
        all_gather_single(gathered, new)
        torch._foreach_copy_(params, list(gathered[:K].unbind(0)))
