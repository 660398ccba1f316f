"""Command line: ``python -m nanogpt_core train --stage gpt2 --scale toy --steps 100 --json out.json``."""

from __future__ import annotations

import argparse
import sys

from .config import STAGES, SCALES, ConfigError, default_scale, stage_config


def _train(args: argparse.Namespace) -> int:
    from .train import train

    overrides = {k: v for k, v in vars(args).items() if k in _OVERRIDES and v is not None}
    cfg = stage_config(args.stage, args.scale, **overrides)
    _, result = train(
        cfg, progress=not args.quiet, checkpoint_path=args.checkpoint, checkpoint_every=args.checkpoint_every,
        resume_from=args.resume,
    )
    if args.json:
        result.to_json(args.json)
    print(result.summary())
    return 0


# Config fields the train command can override, with their help text.
_OVERRIDES = {
    "steps": (int, "optimizer steps"),
    "batch_size": (int, "rows per micro-batch per process"),
    "grad_accum": (int, "micro-batches per optimizer step"),
    "lr": (float, "peak AdamW learning rate"),
    "warmup_steps": (int, "linear warmup steps"),
    "eval_every": (int, "steps between val evaluations (0: only at the end)"),
    "eval_tokens": (int, "val tokens per evaluation"),
    "seed": (int, "random seed (init and data order)"),
    "device": (str, "auto, cpu, cuda, cuda:N"),
    "n_layer": (int, "transformer layers"),
    "n_embd": (int, "model width"),
    "n_head": (int, "attention heads (must divide n_embd)"),
    "seq_len": (int, "tokens per row"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nanogpt_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one stage of the ladder and report the result",
                       description="Train one stage of the ladder. Unset flags take the scale's preset.")
    p.add_argument("--stage", default="gpt2", choices=list(STAGES), help="the ladder stage (every stage before it is on too)")
    p.add_argument("--scale", default=None, choices=SCALES, help="toy (CPU), gpu (one GPU), speedrun (8xH100); default: SPEEDRUN_SCALE, else by hardware")
    for name, (kind, text) in _OVERRIDES.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, help=text)
    p.add_argument("--json", metavar="PATH", help="write the structured result (config, hardware, curves, val bpb) here")
    p.add_argument("--checkpoint", metavar="PATH", help="write a checkpoint here (at the end, and every --checkpoint-every steps)")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="N", help="checkpoint interval in steps (0: only at the end)")
    p.add_argument("--resume", metavar="PATH", help="continue the run saved in this checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "scale", None) is None and hasattr(args, "scale"):
        args.scale = default_scale()
    try:
        return args.func(args)
    except (ConfigError, NotImplementedError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
