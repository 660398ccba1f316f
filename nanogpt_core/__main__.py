"""Command line: ``python -m nanogpt_core train --stage gpt2 --scale toy --steps 100 --json out.json``.

A failure caused by the input (a bad flag value, a missing, damaged or foreign file, a checkpoint
of another run) ends with one line, ``error: ...``, that names the file or value, what is wrong
and what to do, and exit code 2. ``--debug`` (before or after the command) adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from .config import STAGES, SCALES, ConfigError, default_scale, stage_config

# Before PyTorch loads its OpenMP runtime: a waiting thread sleeps instead of spinning. On a CPU shared
# with other work (a browser, another run, the grader's other jobs) spinning threads take the cores
# that the threads they wait for need; compiled graphs, many small parallel regions, suffered most
# (see nanogpt_core/lab/contention.py). OMP_WAIT_POLICY=ACTIVE brings the spinning back.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _train(args: argparse.Namespace) -> int:
    from .train import train

    overrides = {k: v for k, v in vars(args).items() if k in _OVERRIDES and v is not None}
    cfg = stage_config(args.stage, args.scale, **overrides)
    if cfg.train.eval_tokens < cfg.model.seq_len:
        raise ConfigError(f"--eval-tokens {cfg.train.eval_tokens} is less than one row of --seq-len "
                          f"{cfg.model.seq_len}; give at least {cfg.model.seq_len}")
    if args.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every {args.checkpoint_every} must be >= 0 (0: only at the end)")
    if args.checkpoint_every and not args.checkpoint:
        raise ConfigError("--checkpoint-every needs --checkpoint PATH: where to write the checkpoints")
    # Outputs are checked before training, so that a long run does not end with nowhere to write its result.
    for flag, path in (("--json", args.json), ("--log", args.log), ("--checkpoint", args.checkpoint)):
        _writable(flag, path, make_parents=flag == "--checkpoint")
    if args.resume and not os.path.isfile(args.resume):
        raise FileNotFoundError(f"--resume {args.resume}: no checkpoint file there; give the file written by "
                                "train --checkpoint")
    from .attention import require_fa3

    require_fa3(cfg.model.attn_backend, cfg.scale, args.allow_sdpa)  # prints the attention kernel; no SDPA at speedrun
    data = _data(args)
    if data is not None:
        cfg = cfg.replace(vocab_size=data.enc.n_vocab)  # the tokenizer defines the vocabulary
    _, result = train(
        cfg, data, progress=not args.quiet, checkpoint_path=args.checkpoint, checkpoint_every=args.checkpoint_every,
        resume_from=args.resume, log_path=args.log, allow_longer_run=args.allow_longer_run,
    )
    if int(os.environ.get("RANK", 0)) == 0:  # under torchrun, rank 0 reports
        if args.json:
            result.to_json(args.json)
        print(result.summary())
    return 0


def _data(args: argparse.Namespace):
    """The FineWeb-edu shards of ``--data`` with the ``--tokenizer`` trained on them, or None (the toy corpus)."""
    if not (args.data or args.tokenizer):
        return None
    if not (args.data and args.tokenizer):
        raise ConfigError("--data and --tokenizer go together: the shards folder and the tokenizer trained on it")
    if not os.path.isdir(args.data):
        raise FileNotFoundError(f"--data {args.data}: no such folder; download shards into it with "
                                f"`python -m nanogpt_core download --shards N --dir {args.data}`")
    from .download import fineweb_data

    return fineweb_data(args.data, args.tokenizer)


def _writable(flag: str, path: str | None, make_parents: bool = False) -> None:
    """ConfigError unless ``path`` can be written: not a folder, in a folder that exists (or can be made)."""
    if not path:
        return
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a folder; give a file path")
    parent = os.path.dirname(os.path.abspath(path))
    while make_parents and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"{flag} {path}: the folder {os.path.dirname(path) or '.'} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{flag} {path}: the folder {parent} is not writable; choose another path")


def _on_off(text: str) -> bool:
    """``on``/``off`` (or true/false, 1/0) for a switch such as ``--compile off``."""
    value = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not on or off")
    return value


def _on_off_auto(text: str) -> str:
    """``auto`` or an on/off switch, as the config's "on"/"off"/"auto"."""
    return "auto" if text.lower() == "auto" else ("on" if _on_off(text) else "off")


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
    "bf16": (_on_off_auto, "bf16 autocast: on, off, or auto (only where the hardware computes bf16 natively)"),
}


def _full_run_commands(sub) -> None:
    """The full run's commands: download, download-eval, tokenizer, plan, evaluate, sample."""
    p = sub.add_parser("download", help="download FineWeb-edu shards (resumable, verified)",
                       description="Download shards 0..N-1 of karpathy/fineweb-edu-100b-shuffle; the last is the val split.")
    p.add_argument("--shards", type=int, required=True,
                   help="how many shards (~100 MB, ~250M characters each; the last is the val split). nanochat's run 1 "
                        "downloaded 370 (runs/speedrun.sh: BestFit-Crop discards ~35%% of tokens, so 240 / (1 - 0.35)), "
                        "validating on shard_00369; `plan` prints the count for any run")
    p.add_argument("--dir", required=True, help="folder for the parquet shards")
    p.set_defaults(func=_download)
    p = sub.add_parser("download-eval", help="download and unpack the CORE eval bundle (its 22 tasks' data)")
    p.add_argument("--dir", required=True, help="folder to unpack into (the bundle lands in DIR/eval_bundle)")
    p.set_defaults(func=_download_eval)
    p = sub.add_parser("tokenizer", help="train the BPE tokenizer on downloaded shards")
    p.add_argument("--dir", required=True, help="folder with the parquet shards")
    p.add_argument("--vocab", type=int, default=32_768, help="vocabulary size including BOS (speedrun: 32768)")
    p.add_argument("--max-chars", type=int, default=2_000_000_000, help="characters of text to train on")
    p.add_argument("--out", required=True, help="where to write the tokenizer JSON")
    p.set_defaults(func=_tokenizer)
    p = sub.add_parser("plan", help="dry-run planner: parameters, FLOPs, memory, time, cost and data of a run",
                       description="Plan a run before paying for it: parameters, FLOPs per token, tokens and steps, "
                                   "memory per GPU, the time predicted at an assumed MFU, the cost of the training "
                                   "steps, the data it reads (shards to download, the val shard) and the command.")
    p.add_argument("--scale", default="speedrun", choices=SCALES)
    p.add_argument("--stage", default="packing", choices=list(STAGES))
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpu", default="h100", help="h100, h200, a100, rtx4090 (a 24 GB consumer card)")
    p.add_argument("--mfu", type=float, default=0.5,
                   help="model FLOPs utilization to assume (default 0.5: what run 1 measured on 8 H100 with FA3)")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="rows per GPU per micro-batch (default: the scale's, halved until it fits the card)")
    p.add_argument("--price", type=float, default=3.0, help="dollars per GPU-hour")
    p.add_argument("--json", metavar="PATH", help="also write the plan as JSON")
    p.set_defaults(func=_plan)
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


def _download_eval(a: argparse.Namespace) -> int:
    from .core_metric import download_eval_bundle

    print(download_eval_bundle(a.dir))
    return 0


def _download(a: argparse.Namespace) -> int:
    from .download import download_shards

    download_shards(a.shards, a.dir)
    return 0


def _evaluate_or_sample(args: argparse.Namespace) -> int:
    """Load a checkpoint with the data it was trained on; print its val bpb, or a sample."""
    from .checkpoint import checkpoint_config, load_checkpoint
    from .data import toy_data
    from .evaluate import checkpoint_model, evaluate, sample, val_batches
    from .hardware import autocast_for, pick_device, use_bf16

    if args.command == "sample" and args.tokens < 1:
        raise ConfigError(f"--tokens {args.tokens} must be at least 1 (new tokens to sample)")
    if args.command == "evaluate" and args.core and not os.path.isdir(args.core):
        raise FileNotFoundError(f"--core {args.core}: no such folder; get the bundle with "
                                "`python -m nanogpt_core download-eval --dir DIR` and pass DIR/eval_bundle")
    device = pick_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, map_location=device)
    cfg = checkpoint_config(ckpt, args.checkpoint)
    data = _data(args) or toy_data(cfg.model.vocab_size)
    model = checkpoint_model(ckpt, args.checkpoint, data, device, args.tokenizer or "the toy corpus tokenizer")
    if args.command == "sample":
        print(args.prompt + sample(model, data.enc, args.prompt, max_new_tokens=args.tokens))
        return 0
    autocast = autocast_for(device, use_bf16(cfg.train.bf16, device))
    batches = val_batches(data, cfg.train.batch_size, cfg.model.seq_len, cfg.train.eval_tokens)
    metrics = evaluate(model, batches, data.token_bytes, autocast)
    print(f"step {ckpt['step']}: val loss {metrics['loss']:.4f} nats/token, {metrics['bpb']:.4f} bits per byte")
    if args.core:
        from .core_metric import core_score, load_bundle

        with autocast():
            result = core_score(model, data.enc, load_bundle(args.core, args.core_max_per_task), cfg.model.seq_len, device)
        for label, r in result["tasks"].items():
            print(f"  {label:<36} accuracy {r['accuracy']:.4f}  centered {r['centered']:+.4f}  ({r['items']} items)")
        print(f"CORE {result['core']:.4f}  (GPT-2 1.5B: 0.2565; nanochat run 1: 0.2585)")
    return 0


def _tokenizer(args: argparse.Namespace) -> int:
    from .download import train_tokenizer_on_shards
    from .tokenizer import save_tokenizer

    _writable("--out", args.out)
    enc = train_tokenizer_on_shards(args.dir, args.vocab, args.max_chars)
    save_tokenizer(enc, args.out)
    print(f"wrote a {enc.n_vocab}-token tokenizer to {args.out}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    import json

    from .plan import make_plan

    _writable("--json", args.json)
    plan = make_plan(args.scale, args.stage, args.gpus, args.nodes, args.gpu, args.mfu, args.price,
                     micro_batch=args.micro_batch)
    print(plan.report())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(plan.to_dict(), f, indent=1)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nanogpt_core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="on an error, print the traceback too (also accepted "
                        "after the command)")
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
    p.add_argument("--resume", metavar="PATH", help="continue the run saved in this checkpoint (it must be the same "
                   "run: stage, scale, model, optimizer, batch, schedule, seed and data are checked)")
    p.add_argument("--allow-longer-run", action="store_true",
                   help="with --resume: let --steps exceed the checkpoint's (the LR schedule then spans the new steps)")
    p.add_argument("--data", metavar="DIR", help="train on the FineWeb-edu shards in DIR (needs --tokenizer)")
    p.add_argument("--tokenizer", metavar="PATH", help="the tokenizer JSON written by the `tokenizer` command")
    p.add_argument("--allow-sdpa", action="store_true",
                   help="let a speedrun-scale run start without FlashAttention-3 (PyTorch SDPA instead: slower; "
                        "without this flag it refuses and says why)")
    p.add_argument("--log", metavar="PATH", help="append one JSON line per step and per evaluation to this file")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_train)
    _full_run_commands(sub)
    from .classroom import add_commands as classroom_commands  # student, exercises, grade
    from .lab import add_commands as lab_commands  # speedrun, bench

    lab_commands(sub)
    classroom_commands(sub)
    for command in sub.choices.values():  # --debug after the command too (SUPPRESS: it keeps the global one)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="on an error, print the traceback too")
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (a value, a file, a checkpoint), each raised with a message that
    says what to do: the CLI prints that message alone. Anything else is a bug."""
    errors: list[type[BaseException]] = [ValueError, OSError, NotImplementedError, FloatingPointError]
    for module, name in (("nanogpt_core.download", "DownloadError"), ("torch", "OutOfMemoryError")):
        cls = getattr(sys.modules.get(module), name, None)  # only if loaded: never import torch to report an error
        if cls is not None:
            errors.append(cls)
    return tuple(errors)


def _one_line(err: BaseException) -> str:
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    if isinstance(err, OSError) and err.filename and err.strerror:  # "[Errno 2] No such file ...: 'x'"
        text = f"{err.filename}: {err.strerror}"
    if type(err).__name__ == "OutOfMemoryError":
        text = f"out of memory ({text[:200]}); lower --batch-size (and raise --grad-accum to keep the batch)"
    return text or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        if args.command in ("train", "evaluate", "sample", "bench", "speedrun"):
            from .hardware import fit_threads

            fit_threads()  # no more threads than the CPUs this process may use
        if getattr(args, "scale", None) is None and hasattr(args, "scale"):
            args.scale = default_scale()  # SPEEDRUN_SCALE: a bad value is an input error like any other
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        user = isinstance(err, _user_errors())
        if debug:
            import traceback

            traceback.print_exc()
        if user:
            print(f"error: {_one_line(err)}", file=sys.stderr)
            return 2
        print(f"error: unexpected {type(err).__name__}: {_one_line(err)[:300]}. This is a bug in nanogpt_core, "
              "not in your input; rerun with --debug for the traceback and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
