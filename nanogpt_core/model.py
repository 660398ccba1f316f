"""The GPT model: GPT-2 (2019) by default, with the speedrun's changes behind config switches.

A token sequence x_1..x_T becomes logits for x_2..x_{T+1}:

    h_0 = E[x] + P[1..T]                             (token + learned position embeddings)
    h_l = h_{l-1} + Attn(LN(h_{l-1}))                 (pre-norm residual blocks, l = 1..L)
    h_l = h_l + MLP(LN(h_l)),   MLP(z) = W_2 GELU(W_1 z + b_1) + b_2, hidden width 4d
    logits = LN(h_L) E^T                              (the head shares E: tied embeddings)

Training minimizes the mean cross-entropy of the next token.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import causal_attention
from .config import ModelConfig


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: project to q, k, v; attend per head; project back."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim, self.backend = cfg.n_head, cfg.head_dim, cfg.attn_backend
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        y = causal_attention(q, k, v, backend=self.backend)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    """Position-wise feed-forward network at 4x width: W_2 act(W_1 x)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2's init: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2L)."""
        for name, p in self.named_parameters():
            if p.dim() < 2:
                nn.init.zeros_(p) if name.endswith("bias") else nn.init.ones_(p)
            elif name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * self.cfg.n_layer))
            else:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, reduction: str = "mean"):
        """idx: (B, T) token ids. Returns logits (B, T, V), or the loss when targets are given.

        Targets equal to -1 are ignored. ``reduction='none'`` gives the per-token loss (B, T).
        """
        B, T = idx.shape
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence of length {T} is longer than the model's seq_len={self.cfg.seq_len}")
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x)).float()
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.flatten(0, 1), targets.reshape(-1), ignore_index=-1, reduction=reduction)
        return loss.view(B, T) if reduction == "none" else loss

    # ---- accounting -------------------------------------------------------------------------
    def num_params(self) -> dict[str, int]:
        """Parameter counts: total (shared tensors counted once), embeddings, and the rest.

        ``scaling`` follows nanochat: every parameter except embedding tables (token, position,
        value embeddings); a tied head shares the token table and so adds nothing.
        """
        seen, counts = set(), {"total": 0, "embeddings": 0}
        for module_name, module in self.named_modules():
            for name, p in module.named_parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                counts["total"] += p.numel()
                if isinstance(module, nn.Embedding):
                    counts["embeddings"] += p.numel()
        counts["scaling"] = counts["total"] - counts["embeddings"]
        return counts

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6 per matmul weight (forward 2, backward 4) plus attention.

        Per layer, QK^T and AV cost 2 * 2 * T_eff * d forward for one query (d = n_head *
        head_dim), times 3 for forward + backward: 12 * T_eff * d. Following PaLM and nanochat,
        T_eff is the layer's full context, not the causal average T/2. Embedding lookups are free;
        the head is a matmul even when it shares the token table.
        """
        matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        attn = sum(12 * self.cfg.n_embd * self.cfg.seq_len for _ in range(self.cfg.n_layer))
        return 6 * matmul + attn
