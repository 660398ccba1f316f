"""The GPT model: GPT-2 (2019) by default, with the speedrun's changes behind config switches.

A token sequence x_1..x_T becomes logits for x_2..x_{T+1}:

    h_0 = E[x] + P[1..T]                             (token + learned position embeddings)
    h_l = h_{l-1} + Attn(LN(h_{l-1}))                 (pre-norm residual blocks, l = 1..L)
    h_l = h_l + MLP(LN(h_l)),   MLP(z) = W_2 GELU(W_1 z + b_1) + b_2, hidden width 4d
    logits = LN(h_L) E^T                              (the head shares E: tied embeddings)

Training minimizes the mean cross-entropy of the next token.

The speedrun's block (stages `modern-block` and `value-embeddings`), one switch each:
- pos_emb="rope": no P; q and k are rotated by position (``apply_rotary``), so q.k depends
  only on the distance between two tokens.
- norm="rmsnorm": LN becomes parameter-free RMSNorm, norm(z) = z / sqrt(mean(z^2) + eps),
  also applied right after the token embedding.  qk_norm: RMSNorm of q and k per head.
- mlp="relu2": MLP(z) = W_2 relu(W_1 z)^2.  bias=False: no biases.  tie_embeddings=False:
  the head has its own matrix.  logit_softcap=c: logits = c tanh(logits / c), in fp32.
- zero_init_proj: the speedrun's init (``GPT.init_weights``).
- resid_scalars: before block i, h = a_i h + b_i x0, with x0 the normalized token embedding.
- value_embeds: on alternating layers (the last included) v = v + 2 sigmoid(g) * VE_i[x],
  with a per-head gate g computed from the block input.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import (attention_flops_per_token, causal_attention, formula_compiles_faster, layer_windows,
                        resolve_backend)
from .config import ModelConfig

VE_GATE_CHANNELS = 32  # the value-embedding gate reads the first 32 channels of its input (nanochat)


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dim: x / sqrt(mean(x^2) + eps), eps = dtype's eps."""
    return F.rms_norm(x, (x.size(-1),))


class RMSNorm(nn.Module):
    """``rms_norm`` as a module (no parameters), so a block can hold LayerNorm or RMSNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x)


def make_norm(cfg: ModelConfig) -> nn.Module:
    return RMSNorm() if cfg.norm == "rmsnorm" else nn.LayerNorm(cfg.n_embd, bias=cfg.bias)


def rotary_tables(seq_len: int, head_dim: int, base: float = 10_000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the RoPE angles, each (seq_len, head_dim/2): angle[t, i] = t * base^(-2i/head_dim)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (RoPE). x: (..., T, D); cos, sin: (T, D/2).

    Channel i is paired with channel i + D/2 (nanochat's half-split convention) and the pair
    at position t is rotated by the angle t * theta_i:
        y_i = x_i cos + x_{i+D/2} sin,   y_{i+D/2} = -x_i sin + x_{i+D/2} cos.
    A rotation keeps norms, and q_t . k_s then depends on t - s only.
    """
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1).type_as(x)


def mix_value_embedding(v: torch.Tensor, ve: torch.Tensor, gate_logits: torch.Tensor) -> torch.Tensor:
    """v + 2 sigmoid(g) * ve, one gate per head. v, ve: (B, T, H, D); gate_logits: (B, T, H).

    The gate lies in (0, 2); a zero-initialized gate starts every head at 1.0.
    """
    return v + 2 * torch.sigmoid(gate_logits).unsqueeze(-1) * ve


def softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(logits / cap): close to the identity for |z| << cap, bounded in (-cap, cap)."""
    return cap * torch.tanh(logits / cap)


def has_value_embedding(layer_idx: int, n_layer: int) -> bool:
    """Value embeddings sit on alternating layers, counted back from the last one (always included)."""
    return layer_idx % 2 == (n_layer - 1) % 2


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: project to q, k, v; attend per head; project back."""

    def __init__(self, cfg: ModelConfig, window: int | None = None, layer_idx: int = 0):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.backend = resolve_backend(cfg.attn_backend)  # decided once: what runs here ("auto" -> fa3 or sdpa)
        self.formula_when_compiled = cfg.attn_backend == "auto"  # see attention.formula_compiles_faster
        self.window = window  # left context in tokens
        self.qk_norm = cfg.qk_norm
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        if cfg.value_embeds and has_value_embedding(layer_idx, cfg.n_layer):
            self.ve_gate = nn.Linear(min(VE_GATE_CHANNELS, cfg.n_embd), cfg.n_head, bias=False)

    def forward(self, x: torch.Tensor, rotary=None, ve: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, C); rotary: the (cos, sin) tables or None; ve: this layer's value embedding (B, T, C)."""
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, self.head_dim) for t in self.c_attn(x).split(C, dim=2))
        if ve is not None:
            v = mix_value_embedding(v, ve.view_as(v), self.ve_gate(x[..., : self.ve_gate.in_features]))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if self.qk_norm:  # after RoPE, per head
            q, k = rms_norm(q), rms_norm(k)
        backend = "naive" if self.formula_when_compiled and formula_compiles_faster(q) else self.backend
        y = causal_attention(q, k, v, backend=backend, window=self.window)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    """Position-wise feed-forward network at 4x width: W_2 act(W_1 x), act = GELU or ReLU^2."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.relu2 = cfg.mlp == "relu2"
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        h = F.relu(h).square() if self.relu2 else F.gelu(h, approximate="tanh")
        return self.c_proj(h)


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg: ModelConfig, window: int | None = None, layer_idx: int = 0):
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg, window, layer_idx)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rotary=None, ve: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rotary, ve)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.n_embd) if cfg.pos_emb == "learned" else None
        self.value_embeds = nn.ModuleDict(  # one table per value-embedding layer, keyed by layer index
            {str(i): nn.Embedding(cfg.vocab_size, cfg.n_embd)
             for i in range(cfg.n_layer) if cfg.value_embeds and has_value_embedding(i, cfg.n_layer)}
        )
        self.blocks = nn.ModuleList(Block(cfg, window, i) for i, window in enumerate(layer_windows(cfg)))
        self.ln_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        if cfg.resid_scalars:  # h = resid_lambdas[i] * h + x0_lambdas[i] * x0 before block i
            self.resid_lambdas = nn.Parameter(torch.ones(cfg.n_layer))
            self.x0_lambdas = nn.Parameter(torch.full((cfg.n_layer,), 0.1))
        if cfg.pos_emb == "rope":
            cos, sin = rotary_tables(cfg.seq_len, cfg.head_dim, cfg.rope_base)  # kept in bf16, as run 1 keeps them
            self.register_buffer("rope_cos", cos.bfloat16(), persistent=False)
            self.register_buffer("rope_sin", sin.bfloat16(), persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2's init: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2L).

        With ``zero_init_proj``, the speedrun's init (nanochat): output projections (attn and MLP
        c_proj) zero, so every block starts as the identity; an untied lm_head N(0, 0.001) and
        an untied token table N(0, 1); the other matrices, value tables included, uniform with
        std 1/sqrt(d) (bound sqrt(3/d)). Always: value-embedding gates zero (gate 1.0 at start),
        residual scalars 1.0 and x0 scalars 0.1.
        """
        cfg, speedrun = self.cfg, self.cfg.zero_init_proj
        bound = math.sqrt(3 / cfg.n_embd)

        def matrix(w: torch.Tensor) -> None:  # a hidden matrix, or a value table
            nn.init.uniform_(w, -bound, bound) if speedrun else nn.init.normal_(w, std=0.02)

        def projection(w: torch.Tensor) -> None:  # a block's output projection, added to the residual stream
            nn.init.zeros_(w) if speedrun else nn.init.normal_(w, std=0.02 / math.sqrt(2 * cfg.n_layer))

        def zero_biases(*layers: nn.Linear) -> None:
            for layer in layers:
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)

        # drawn in the order of the parameters, so a config draws the same numbers whatever its switches
        if speedrun and not cfg.tie_embeddings:
            nn.init.normal_(self.wte.weight, std=1.0)
        else:  # a tied table is also the head: GPT-2's N(0, 0.02), or the speedrun's matrix init
            matrix(self.wte.weight) if speedrun else nn.init.normal_(self.wte.weight, std=0.02)
        if self.wpe is not None:
            nn.init.normal_(self.wpe.weight, std=0.02)
        for table in self.value_embeds.values():
            matrix(table.weight)
        for block in self.blocks:
            attn, mlp = block.attn, block.mlp
            matrix(attn.c_attn.weight)
            projection(attn.c_proj.weight)
            if hasattr(attn, "ve_gate"):
                nn.init.zeros_(attn.ve_gate.weight)  # gate 2 * sigmoid(0) = 1 at start
            matrix(mlp.c_fc.weight)
            projection(mlp.c_proj.weight)
            zero_biases(attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)
        for norm in self.modules():
            if isinstance(norm, nn.LayerNorm):
                nn.init.ones_(norm.weight)
                if norm.bias is not None:
                    nn.init.zeros_(norm.bias)
        if not cfg.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, std=0.001 if speedrun else 0.02)
        if cfg.resid_scalars:
            nn.init.ones_(self.resid_lambdas)
            nn.init.constant_(self.x0_lambdas, 0.1)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean"):
        """idx: (B, T) token ids. Returns logits (B, T, V), or the loss when targets are given.

        Targets equal to -1 are ignored. ``reduction='none'`` gives the per-token loss (B, T).
        """
        B, T = idx.shape
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence of length {T} is longer than the model's seq_len={self.cfg.seq_len}")
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        if self.cfg.norm == "rmsnorm":
            x = rms_norm(x)
        x0 = x  # the (normalized) embedding, mixed back in before every block by the residual scalars
        rotary = (self.rope_cos[:T], self.rope_sin[:T]) if self.cfg.pos_emb == "rope" else None
        for i, block in enumerate(self.blocks):
            if self.cfg.resid_scalars:
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, rotary, ve)
        logits = self.lm_head(self.ln_f(x)).float()  # fp32 from here on: softcap and loss
        if self.cfg.logit_softcap:
            logits = softcap(logits, self.cfg.logit_softcap)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.flatten(0, 1), targets.reshape(-1), ignore_index=-1, reduction=reduction)
        return loss.view(B, T) if reduction == "none" else loss

    # ---- accounting -------------------------------------------------------------------------
    def num_params(self) -> dict[str, int]:
        """Parameter counts: total (shared tensors counted once), each kind of embedding table, the rest.

        An embedding table is a lookup: a token touches one row of it and costs no FLOPs, so
        tables are reported apart (token, position, value embeddings, and their sum
        ``embeddings``). ``scaling`` follows nanochat: every other parameter (the matrices that
        every token multiplies through, the head, the scalars), the N of compute laws like
        C = 6 N D. A tied head shares the token table and so adds nothing.
        """
        kinds = {"wte": "token_embedding", "wpe": "position_embedding"}
        counts = {"total": 0, "token_embedding": 0, "position_embedding": 0, "value_embeddings": 0}
        seen = set()
        for module_name, module in self.named_modules():
            for name, p in module.named_parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                counts["total"] += p.numel()
                if isinstance(module, nn.Embedding):
                    counts[kinds.get(module_name, "value_embeddings")] += p.numel()
        counts["embeddings"] = counts["token_embedding"] + counts["position_embedding"] + counts["value_embeddings"]
        counts["scaling"] = counts["total"] - counts["embeddings"]
        return counts

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6 per matmul weight (forward 2, backward 4) plus attention.

        Per layer, QK^T and AV cost 2 * 2 * T_eff * d forward for one query (d = n_head *
        head_dim), times 3 for forward + backward: 12 * T_eff * d. Following PaLM and nanochat,
        T_eff is the layer's window (the full context for long layers), not the causal average;
        see ``attention_flops_per_token``. Embedding lookups are free; the head is a matmul even
        when it shares the token table.
        """
        matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6 * matmul + attention_flops_per_token(self.cfg)
