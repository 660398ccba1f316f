"""Command line: ``python -m nanogpt_core train --stage gpt2 --scale toy --steps 100 --json out.json``."""

from __future__ import annotations

import argparse
import os
import sys

from .config import STAGES, SCALES, ConfigError, default_scale, stage_config


def _train(args: argparse.Namespace) -> int:
    from .train import train

    overrides = {k: v for k, v in vars(args).items() if k in _OVERRIDES and v is not None}
    cfg = stage_config(args.stage, args.scale, **overrides)
    data = None
    if args.data or args.tokenizer:  # FineWeb-edu shards (see `download` and `tokenizer`) instead of the toy corpus
        if not (args.data and args.tokenizer):
            raise ConfigError("--data and --tokenizer go together: the shards folder and the tokenizer trained on it")
        from .download import fineweb_data

        data = fineweb_data(args.data, args.tokenizer, cfg.train.eval_tokens)
        cfg = cfg.replace(vocab_size=data.enc.n_vocab)  # the tokenizer defines the vocabulary
    _, result = train(
        cfg, data, progress=not args.quiet, checkpoint_path=args.checkpoint, checkpoint_every=args.checkpoint_every,
        resume_from=args.resume, log_path=args.log,
    )
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun, rank 0 reports
        if args.json:
            result.to_json(args.json)
        print(result.summary())
    return 0


def _on_off(text: str) -> bool:
    """``on``/``off`` (or true/false, 1/0) for a switch such as ``--compile off``."""
    value = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not on or off")
    return value


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
    "compile": (_on_off, "torch.compile the model: on or off (e.g. off to skip compiling on a CPU)"),
    "bf16": (_on_off, "bf16 autocast: on or off"),
}


def _full_run_commands(sub) -> None:
    """The full run's commands: download, tokenizer, plan, speedrun (the toy scoreboard)."""
    p = sub.add_parser("download", help="download FineWeb-edu shards (resumable, verified)",
                       description="Download shards 0..N-1 of karpathy/fineweb-edu-100b-shuffle; the last is the val split.")
    p.add_argument("--shards", type=int, required=True, help="how many shards (~100 MB each); nanochat's run 1 used 240")
    p.add_argument("--dir", required=True, help="folder for the parquet shards")
    p.set_defaults(func=lambda a: _call("download", "download_shards", a.shards, a.dir) and 0)
    p = sub.add_parser("download-eval", help="download and unpack the CORE eval bundle (its 22 tasks' data)")
    p.add_argument("--dir", required=True, help="folder to unpack into (the bundle lands in DIR/eval_bundle)")
    p.set_defaults(func=lambda a: print(_call("core_metric", "download_eval_bundle", a.dir)) or 0)
    p = sub.add_parser("tokenizer", help="train the BPE tokenizer on downloaded shards")
    p.add_argument("--dir", required=True, help="folder with the parquet shards")
    p.add_argument("--vocab", type=int, default=32_768, help="vocabulary size including BOS (speedrun: 32768)")
    p.add_argument("--max-chars", type=int, default=2_000_000_000, help="characters of text to train on")
    p.add_argument("--out", required=True, help="where to write the tokenizer JSON")
    p.set_defaults(func=_tokenizer)
    p = sub.add_parser("plan", help="dry-run planner: parameters, FLOPs, memory, time and cost of a run")
    p.add_argument("--scale", default="speedrun", choices=SCALES)
    p.add_argument("--stage", default="packing", choices=list(STAGES))
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpu", default="h100", help="h100, h200, a100")
    p.add_argument("--mfu", type=float, default=0.5, help="model FLOPs utilization to assume")
    p.add_argument("--price", type=float, default=3.0, help="dollars per GPU-hour")
    p.add_argument("--json", metavar="PATH", help="also write the plan as JSON")
    p.set_defaults(func=_plan)
    p = sub.add_parser("speedrun", help="the scoreboard: every ladder stage on this machine vs the gpt2 baseline")
    p.add_argument("--scale", default="toy", choices=SCALES)
    p.add_argument("--seconds", type=float, default=300.0, help="training seconds per stage (equal wall-time budget)")
    p.add_argument("--stages", nargs="*", default=None, help="a subset of the ladder (default: every built stage)")
    p.add_argument("--out", default="speedrun_scoreboard", help="path prefix for the .json and .png")
    p.set_defaults(func=lambda a: _call("scoreboard", "main_cli", a))
    for name, text in (("evaluate", "val loss and bits per byte of a checkpoint"), ("sample", "sample text from a checkpoint")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--checkpoint", required=True, help="a checkpoint written by train --checkpoint")
        p.add_argument("--data", metavar="DIR", help="FineWeb-edu shards (with --tokenizer); default: the toy corpus")
        p.add_argument("--tokenizer", metavar="PATH", help="the tokenizer JSON of the run")
        p.add_argument("--device", default="auto")
        if name == "evaluate":
            p.add_argument("--core", metavar="BUNDLE", help="also score CORE on an unpacked eval bundle (see download-eval)")
            p.add_argument("--core-max-per-task", type=int, default=-1,
                           help="items per CORE task (-1: all; fewer is faster and noisier)")
        if name == "sample":
            p.add_argument("--prompt", default="The capital of France is")
            p.add_argument("--tokens", type=int, default=64, help="new tokens to sample")
        p.set_defaults(func=_evaluate_or_sample)


def _evaluate_or_sample(args: argparse.Namespace) -> int:
    """Load a checkpoint with the data it was trained on; print its val bpb, or a sample."""
    from .config import Config
    from .data import toy_data
    from .evaluate import evaluate, sample
    from .model import GPT
    from .train import autocast_for, load_checkpoint, pick_device

    device = pick_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, map_location=device)
    cfg = Config.from_dict(ckpt["config"])
    if args.data and args.tokenizer:
        from .download import fineweb_data

        data = fineweb_data(args.data, args.tokenizer, cfg.train.eval_tokens)
    else:
        data = toy_data(cfg.model.vocab_size)
    model = GPT(cfg.model).to(device)
    model.load_state_dict(ckpt["model"])
    if args.command == "sample":
        print(args.prompt + sample(model, data.enc, args.prompt, max_new_tokens=args.tokens))
        return 0
    autocast = autocast_for(device, cfg.train.bf16)
    metrics = evaluate(model, data.stream("val"), data.token_bytes, cfg.train.batch_size, cfg.train.eval_tokens, autocast)
    print(f"step {ckpt['step']}: val loss {metrics['loss']:.4f} nats/token, {metrics['bpb']:.4f} bits per byte")
    if args.core:
        from .core_metric import core_score, load_bundle

        with autocast():
            result = core_score(model, data.enc, load_bundle(args.core, args.core_max_per_task), cfg.model.seq_len, device)
        for label, r in result["tasks"].items():
            print(f"  {label:<36} accuracy {r['accuracy']:.4f}  centered {r['centered']:+.4f}  ({r['items']} items)")
        print(f"CORE {result['core']:.4f}  (GPT-2 1.5B: 0.2565; nanochat run 1: 0.2585)")
    return 0


def _bench_command(sub) -> None:
    p = sub.add_parser("bench", help="tokens/s of the gpt2, flash-attention and compile stages, and the attention backends",
                       description="toy scale (default): the stages on this CPU, naive vs SDPA attention, the compiled "
                                   "crossover and a step profile. --scale gpu: the GPU check on one CUDA GPU: every "
                                   "attention backend against the naive reference, then the stages at gpu scale.")
    p.add_argument("--scale", choices=("toy", "gpu"), default="toy", help="toy (CPU) or gpu (one CUDA GPU)")
    p.add_argument("--steps", type=int, help="timed steps per variant and round (toy: 10, gpu: 100)")
    p.add_argument("--warmup", type=int, help="untimed steps first; the first one compiles (toy: 2, gpu: 5)")
    p.add_argument("--rounds", type=int, help="interleaved rounds; each variant reports its median (toy: 3, gpu: 1)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON (e.g. book/results/bench_toy.json)")
    p.set_defaults(func=_bench)


def _bench(a: argparse.Namespace) -> int:
    from . import bench

    given = {k: v for k, v in (("steps", a.steps), ("warmup", a.warmup), ("rounds", a.rounds)) if v is not None}
    for name, value in given.items():  # what is not given keeps the function's default
        if value < 1:
            why = ": the first step compiles and is never timed" if name == "warmup" else ""
            raise ConfigError(f"--{name}={value} must be at least 1{why}")
    (bench.run_gpu_bench if a.scale == "gpu" else bench.run_bench)(json_path=a.json, **given)
    return 0


def _call(module: str, fn: str, *args):
    import importlib

    return getattr(importlib.import_module(f"nanogpt_core.{module}"), fn)(*args)


def _tokenizer(args: argparse.Namespace) -> int:
    from .download import train_tokenizer_on_shards
    from .tokenizer import save_tokenizer

    enc = train_tokenizer_on_shards(args.dir, args.vocab, args.max_chars)
    save_tokenizer(enc, args.out)
    print(f"wrote a {enc.n_vocab}-token tokenizer to {args.out}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    import json

    from .plan import make_plan

    plan = make_plan(args.scale, args.stage, args.gpus, args.nodes, args.gpu, args.mfu, args.price)
    print(plan.report())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(plan.to_dict(), f, indent=1)
    return 0


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
    p.add_argument("--data", metavar="DIR", help="train on the FineWeb-edu shards in DIR (needs --tokenizer)")
    p.add_argument("--tokenizer", metavar="PATH", help="the tokenizer JSON written by the `tokenizer` command")
    p.add_argument("--log", metavar="PATH", help="append one JSON line per step and per evaluation to this file")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_train)
    _full_run_commands(sub)
    _bench_command(sub)
    from .classroom import add_commands as classroom_commands  # student, exercises, grade

    classroom_commands(sub)
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
