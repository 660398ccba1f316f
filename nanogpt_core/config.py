"""Configs, the stage ladder and the scale presets.

A *stage* is a named configuration, not a code branch: stage k is stage k-1 with one more
technique switched on. ``stage_config(stage, scale)`` returns the config with every stage
up to ``stage`` switched on, at the sizes of ``scale``. Every switch lives in ``ModelConfig``
or ``TrainConfig``; the model, optimizer, attention and data loader read them from there.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

SCALES = ("toy", "gpu", "speedrun")


class ConfigError(ValueError):
    """A config value is out of range; the message names the field and what is allowed."""


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")


def _positive(name: str, value) -> None:
    if not value > 0:
        raise ConfigError(f"{name}={value!r} must be > 0")


@dataclass
class ModelConfig:
    """The transformer's shape and its architecture switches (defaults: GPT-2, 2019)."""

    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    seq_len: int = 256
    # attention: "naive" writes the T x T matrix out (2019); "sdpa"/"fa3"/"auto" are fused kernels
    attn_backend: str = "naive"
    window_pattern: str = "L"  # per-layer windows, tiled over layers: L = full context, S = short
    short_window: float = 0.5  # the short window as a fraction of seq_len
    # the block
    pos_emb: str = "learned"  # "learned" absolute positions, or "rope"
    rope_base: float = 10_000.0
    norm: str = "layernorm"  # "layernorm" (with affine params) or "rmsnorm" (parameter-free)
    mlp: str = "gelu"  # "gelu" or "relu2" (ReLU squared)
    bias: bool = True
    tie_embeddings: bool = True
    qk_norm: bool = False
    logit_softcap: float = 0.0  # 0 = off; else logits = c * tanh(logits / c)
    zero_init_proj: bool = False
    value_embeds: bool = False
    resid_scalars: bool = False

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def validate(self) -> "ModelConfig":
        for name in ("vocab_size", "n_layer", "n_head", "n_embd", "seq_len"):
            _positive(name, getattr(self, name))
        if self.n_embd % self.n_head:
            divisors = [h for h in range(1, self.n_embd + 1) if self.n_embd % h == 0 and h <= 64]
            raise ConfigError(
                f"n_head={self.n_head} does not divide n_embd={self.n_embd}; "
                f"allowed n_head values for this width include {divisors}"
            )
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ConfigError(f"pos_emb='rope' needs an even head_dim, got n_embd/n_head={self.head_dim}")
        _choice("attn_backend", self.attn_backend, ("naive", "sdpa", "fa3", "auto"))
        _choice("pos_emb", self.pos_emb, ("learned", "rope"))
        _choice("norm", self.norm, ("layernorm", "rmsnorm"))
        _choice("mlp", self.mlp, ("gelu", "relu2"))
        if not self.window_pattern or set(self.window_pattern.upper()) - {"S", "L"}:
            raise ConfigError(
                f"window_pattern={self.window_pattern!r} must be a non-empty string of 'S' (short) "
                "and 'L' (long) characters, e.g. 'SSSL'"
            )
        if not 0 < self.short_window <= 1:
            raise ConfigError(
                f"short_window={self.short_window!r} is a fraction of seq_len and must be in (0, 1]; "
                "a window larger than the sequence is not allowed"
            )
        if self.logit_softcap < 0:
            raise ConfigError(f"logit_softcap={self.logit_softcap!r} must be >= 0 (0 turns it off)")
        return self


@dataclass
class TrainConfig:
    """How to train: batch, schedule, optimizer, precision and data loader switches."""

    steps: int = 200
    batch_size: int = 16  # rows per micro-batch (per process)
    grad_accum: int = 1  # micro-batches per optimizer step
    optimizer: str = "adamw"  # "adamw" or "muon" (Muon for hidden matrices, AdamW for the rest)
    lr: float = 1e-3  # AdamW peak learning rate (the 2019 recipe: one rate for everything)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = off
    # optimizer="muon" (nanochat's defaults, unscaled by batch size; see chapter 05_muon)
    matrix_lr: float = 0.02  # Muon, hidden matrices of the blocks
    embedding_lr: float = 0.3  # AdamW, token/position/value embeddings (x (n_embd/768)^-0.5)
    unembedding_lr: float = 0.004  # AdamW, lm_head and a tied table (x (n_embd/768)^-0.5)
    scalar_lr: float = 0.5  # AdamW, x0 residual scalars (resid scalars get 0.01x)
    muon_momentum: float = 0.95  # warmed up from 0.85 over the first 300 steps
    muon_weight_decay: float = 0.2  # cautious, at depth 12; x (12/n_layer)^2, decays linearly to 0
    schedule: str = "cosine"  # "cosine" (warmup, cosine decay) or "warmdown" (constant, then linear)
    warmup_steps: int = 20
    warmdown_frac: float = 0.4  # warmdown: fraction of the steps spent decaying
    final_lr_frac: float = 0.1  # the LR at the last step, as a fraction of the peak
    compile: bool = False
    bf16: str = "off"  # bf16 autocast for the forward pass: "on", "off", or "auto" (where the hardware computes bf16)
    loader: str = "stream"  # "stream" (plain token stream), "bos" (BOS-aligned), "bestfit" (packing)
    eval_every: int = 50  # steps between val evaluations (0 = only at the end)
    eval_steps: tuple[int, ...] = ()  # also evaluate at these steps (e.g. early ones, to resolve a fast curve)
    eval_tokens: int = 32_768  # val tokens per evaluation
    seed: int = 1337
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...

    def validate(self) -> "TrainConfig":
        for name in ("steps", "batch_size", "grad_accum", "lr"):
            _positive(name, getattr(self, name))
        _choice("optimizer", self.optimizer, ("adamw", "muon"))
        _choice("schedule", self.schedule, ("cosine", "warmdown"))
        _choice("loader", self.loader, ("stream", "bos", "bestfit"))
        if isinstance(self.bf16, bool):  # configs saved before "auto" existed
            self.bf16 = "on" if self.bf16 else "off"
        _choice("bf16", self.bf16, ("off", "on", "auto"))
        if self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps={self.warmup_steps!r} must be >= 0")
        if not 0 <= self.warmdown_frac <= 1:
            raise ConfigError(f"warmdown_frac={self.warmdown_frac!r} must be in [0, 1]")
        if not 0 <= self.final_lr_frac <= 1:
            raise ConfigError(f"final_lr_frac={self.final_lr_frac!r} must be in [0, 1]")
        if self.eval_every < 0 or self.eval_tokens <= 0:
            raise ConfigError("eval_every must be >= 0 and eval_tokens > 0")
        self.eval_steps = tuple(self.eval_steps)
        if any(not isinstance(s, int) or s < 0 for s in self.eval_steps):
            raise ConfigError(f"eval_steps={self.eval_steps!r} must be step numbers >= 0")
        return self


@dataclass
class Config:
    """A whole run: where it sits on the ladder, at which scale, and its two halves."""

    stage: str = "gpt2"
    scale: str = "toy"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "Config":
        _choice("stage", self.stage, tuple(STAGES))
        _choice("scale", self.scale, SCALES)
        self.model.validate()
        self.train.validate()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return cls(
            stage=d["stage"], scale=d["scale"], model=ModelConfig(**d["model"]), train=TrainConfig(**d["train"])
        ).validate()

    def replace(self, **overrides) -> "Config":
        """A copy with fields changed, e.g. ``cfg.replace(steps=50, n_layer=2)``.

        Each keyword names a field of ModelConfig or TrainConfig (or stage/scale).
        """
        model, train, top = {}, {}, {}
        model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
        train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        for key, value in overrides.items():
            if key in ("stage", "scale"):
                top[key] = value
            elif key in model_fields:
                model[key] = value
            elif key in train_fields:
                train[key] = value
            else:
                allowed = sorted(model_fields | train_fields | {"stage", "scale"})
                raise ConfigError(f"unknown config field {key!r}; known fields: {', '.join(allowed)}")
        return dataclasses.replace(
            self,
            **top,
            model=dataclasses.replace(self.model, **model),
            train=dataclasses.replace(self.train, **train),
        ).validate()


# Sizes per scale. `toy` fits a 2-core CPU in seconds; `gpu` is d12-class on one GPU;
# `speedrun` is nanochat's run-1 model (d24) on one 8xH100 node.
SCALE_PRESETS: dict[str, dict] = {
    "toy": dict(
        vocab_size=4096, n_layer=4, n_head=4, n_embd=256, seq_len=256,
        batch_size=16, grad_accum=1, steps=200, warmup_steps=20, eval_every=50, eval_tokens=32_768,
    ),
    "gpu": dict(
        vocab_size=32_768, n_layer=12, n_head=6, n_embd=768, seq_len=1024,
        batch_size=32, grad_accum=1, steps=2_000, warmup_steps=100, eval_every=250, eval_tokens=2**20,
    ),
    "speedrun": dict(
        vocab_size=32_768, n_layer=24, n_head=12, n_embd=1536, seq_len=2048,
        # 524,288 tokens/step = 16 rows x 2048 x 8 GPUs x grad_accum 2 (on N GPUs: grad_accum 16/N;
        # `python -m nanogpt_core plan --gpus N` prints it); 16,704 steps = 12 x 729.8M scaling params
        batch_size=16, grad_accum=2, steps=16_704, warmup_steps=0, eval_every=250, eval_tokens=10 * 2**20,
        # run 1's schedule: linear warmdown over the last 50% of the steps (--warmdown-ratio 0.5, the default
        # of scripts/base_train.py at nanochat 348fbb3); the toy and gpu scales keep TrainConfig's 0.4
        warmdown_frac=0.5,
    ),
}

@dataclass(frozen=True)
class Stage:
    """One rung of the ladder: the config fields it sets on top of the stages before it."""

    chapter: str  # the chapter notebook that teaches it
    technique: str  # what it switches on, in words
    switches: dict  # config fields (of ModelConfig or TrainConfig) and their values


# The ladder, in order: stage k is stage k-1 plus one technique.
STAGES: dict[str, Stage] = {
    "gpt2": Stage("02_baseline_gpt2", "GPT-2 (2019): learned positions, LayerNorm, GELU, tied embeddings, AdamW, "
                  "cosine LR, plain token stream", {}),
    # nanochat run 1: "SSSL", short window = seq_len / 2 (later versions: seq_len / 4)
    "flash-attention": Stage("03_flash_attention", "fused attention kernel (FA3 on Hopper, SDPA elsewhere) + SSSL "
                             "sliding windows", dict(attn_backend="auto", window_pattern="SSSL", short_window=0.5)),
    # bf16 "auto": autocast where the hardware computes bf16 natively, fp32 elsewhere (hardware.use_bf16)
    "compile": Stage("04_compile_and_bf16", "torch.compile of the model, a fused AdamW step, bf16 autocast where "
                     "the hardware computes bf16", dict(compile=True, bf16="auto")),
    # nanochat run 1: Muon + AdamW, constant LR then linear warmdown to 0, no clipping. The warmdown's
    # length is the scale's (warmdown_frac: 0.5 at speedrun as in run 1, TrainConfig's 0.4 elsewhere)
    "muon": Stage("05_muon", "Muon (Polar Express, NorMuon, cautious weight decay) for hidden matrices, AdamW for "
                  "the rest", dict(optimizer="muon", schedule="warmdown", warmup_steps=0,
                                   final_lr_frac=0.0, grad_clip=0.0)),
    "modern-block": Stage("06_architecture", "RoPE, QK-norm, RMSNorm, untied head, no biases, ReLU^2, logit softcap, "
                          "zero-init projections",
                          dict(pos_emb="rope", norm="rmsnorm", mlp="relu2", bias=False, tie_embeddings=False,
                               qk_norm=True, logit_softcap=15.0, zero_init_proj=True)),
    "value-embeddings": Stage("06_architecture", "value embeddings on alternating layers, per-layer residual scalars",
                              dict(value_embeds=True, resid_scalars=True)),
    # greedy crop: nanochat's first BOS-aligned loader
    "bos-loader": Stage("07_bos_aligned_loader", "every row starts at a document's BOS token", dict(loader="bos")),
    "packing": Stage("08_bestfit_packing", "BestFit-Crop packing: rows 100% full (the full speedrun recipe)",
                     dict(loader="bestfit")),
}


def default_scale() -> str:
    """SPEEDRUN_SCALE if set, else `gpu` when CUDA is available, else `toy`."""
    scale = os.environ.get("SPEEDRUN_SCALE", "").strip()
    if scale:
        _choice("SPEEDRUN_SCALE", scale, SCALES)
        return scale
    import torch

    return "gpu" if torch.cuda.is_available() else "toy"


def stage_config(stage: str = "gpt2", scale: str | None = None, **overrides) -> Config:
    """The config of ``stage`` at ``scale``: every stage up to ``stage`` switched on."""
    _choice("stage", stage, tuple(STAGES))
    scale = scale or default_scale()
    _choice("scale", scale, SCALES)
    ladder = list(STAGES)
    switches: dict = {}
    for name in ladder[: ladder.index(stage) + 1]:
        switches.update(STAGES[name].switches)
    return Config(stage=stage, scale=scale).replace(**{**SCALE_PRESETS[scale], **switches, **overrides})
