"""Record reference numbers from nanochat "run 1" (commit 348fbb3) for the package's tests.

This script imports nanochat's OWN code from a checkout of commit 348fbb3 and runs it on
small, seeded CPU configurations. It never imports nanogpt_core. It saves only numbers
(tensors, ints, floats, lists, strings) with torch.save, one dict per file:

  model.pth      GPT forward at a tiny config: weights, a batch, logits, mean and per-token loss
  optimizer.pth  4 steps of MuonAdamW (model.setup_optimizer) with base_train.py's schedules, and
                 the first step again with its fused kernels uncompiled (plain Python)
  loader.pth     the BOS-aligned BestFit-Crop dataloader on a fixed, seeded document stream
  bpb.pth        evaluate_bpb of the model.pth model on the first 3 val batches of loader.pth

Every file holds "nanochat_commit", "generator", "torch_version" and all settings needed to
redo the computation. Run it by hand (it is never run in CI):

  git -C <nanochat-repo> archive 348fbb3 | tar -x -C /tmp/nanochat-348fbb3
  python scripts/record_run1_fixtures.py --nanochat /tmp/nanochat-348fbb3 --out tests/fixtures/run1

Everything runs on CPU in fp32, except where nanochat itself casts (bf16 rotary tables, the
bf16 Polar Express inside muon_step_fused). nanochat's optimizer kernels are torch.compile'd;
they compile on CPU here (needs a C compiler), as in run 1. We use one CPU thread so that the
numbers do not depend on how many cores the machine has.
"""
import argparse
import dataclasses
import inspect
import math
import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # compile in-process, gentle on small machines
import torch

NANOCHAT_COMMIT = "348fbb3"
NANOCHAT_COMMIT_FULL = "348fbb301b8b709ad5d59bdf69e99a51982f594a"
GENERATOR = "scripts/record_run1_fixtures.py"
NUM_THREADS = 1

MODEL_CONFIG = dict(sequence_len=64, vocab_size=512, n_layer=4, n_head=2, n_kv_head=2, n_embd=64,
                    window_pattern="SSSL")  # vocab is a multiple of 64: nanochat adds no padding
BOS = 511  # the fake tokenizer's BOS id (last id of the vocab)
# The course's toy-scale preset; weight decay is base_train.py's depth scaling of --weight-decay 0.2.
OPTIM = dict(unembedding_lr=0.004, embedding_lr=0.3, matrix_lr=0.02, scalar_lr=0.5,
             adam_betas=(0.8, 0.95), weight_decay=0.2 * (12 / MODEL_CONFIG["n_layer"]) ** 2)
SCHEDULE = dict(num_iterations=4, warmup_ratio=0.0, warmdown_ratio=0.5, final_lr_frac=0.0)
# The weights are kept after the first step (momentum buffers from zero) and the last (warmdown,
# decayed weight decay) only, to keep the fixture small; the loss of every step is kept.
SAVED_STEPS = (1, 4)
LOADER = dict(B=4, T=64, n_docs=2500, n_val_docs=1200, row_group_size=100, train_batches=20, val_batches=5)
BPB_STEPS = 3


def header():
    return {"nanochat_commit": NANOCHAT_COMMIT, "nanochat_commit_full": NANOCHAT_COMMIT_FULL,
            "generator": GENERATOR, "torch_version": str(torch.__version__), "device": "cpu",
            "dtype": "float32", "num_threads": NUM_THREADS}


def load_nanochat(path, scratch):
    """Import nanochat's modules from the checkout at `path`."""
    if not (path / "nanochat" / "gpt.py").is_file():
        sys.exit(f"error: {path} is not a nanochat checkout (no nanochat/gpt.py there)")
    # nanochat.dataset (imported by the dataloader) creates <base_dir>/base_data at import time:
    # point its base dir at a scratch folder so nothing is written under ~/.cache.
    os.environ["NANOCHAT_BASE_DIR"] = str(scratch)
    sys.path.insert(0, str(path))
    import nanochat.gpt, nanochat.dataloader, nanochat.loss_eval, nanochat.flash_attention, nanochat.optim
    assert Path(nanochat.gpt.__file__).resolve().is_relative_to(path.resolve()), "imported the wrong nanochat"
    return SimpleNamespace(gpt=nanochat.gpt, optim=nanochat.optim, dataloader=nanochat.dataloader,
                           loss_eval=nanochat.loss_eval, flash_attention=nanochat.flash_attention)


def clone_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def seeded_tokens(seed, shape, low=0, high=MODEL_CONFIG["vocab_size"]):
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- 1. model
def build_model(nc):
    """Exactly base_train.py's path: build on meta, materialize on CPU, init_weights()."""
    torch.manual_seed(0)
    with torch.device("meta"):
        model = nc.gpt.GPT(nc.gpt.GPTConfig(**MODEL_CONFIG))
    model.to_empty(device="cpu")
    model.init_weights()
    return model


def init_rule(name):
    """(mean, std) used to overwrite a parameter; nanochat's own init zeroes c_proj and ve_gate."""
    if name == "resid_lambdas":
        return 1.0, 0.1
    if name == "x0_lambdas":
        return 0.1, 0.05
    if name == "transformer.wte.weight":
        return 0.0, 0.5
    if name == "lm_head.weight":
        return 0.0, 0.02
    if name.endswith("ve_gate.weight"):
        return 0.0, 0.1
    return 0.0, MODEL_CONFIG["n_embd"] ** -0.5  # every other matrix and the value embeddings


@torch.no_grad()
def randomize(model):
    rules = {}
    for i, (name, p) in enumerate(model.named_parameters()):
        mean, std = init_rule(name)
        z = torch.randn(p.shape, generator=torch.Generator().manual_seed(1000 + i))
        p.copy_(mean + std * z)
        rules[name] = {"index": i, "seed": 1000 + i, "mean": mean, "std": std}
    return rules


def record_model(nc):
    model = build_model(nc)
    init = randomize(model)
    seq = seeded_tokens(2000, (2, 65))
    idx, targets = seq[:, :-1].clone(), seq[:, 1:].clone()
    targets[1, -4:] = -1  # nanochat's ignore_index: the last 4 targets of row 1 are ignored
    with torch.no_grad():
        logits = model(idx)
        loss = model(idx, targets)
        loss_per_token = model(idx, targets, loss_reduction="none")
    fa = nc.flash_attention
    return model, {
        **header(),
        "config": dataclasses.asdict(model.config),
        "window_sizes": [list(w) for w in model.window_sizes],
        "attention": {"impl": "fa3" if fa._use_fa3() else "sdpa", "HAS_FA3": fa.HAS_FA3,
                      "_override_impl": fa._override_impl},
        "param_order": [n for n, _ in model.named_parameters()],
        "param_init": init,
        "weights": clone_state(model),
        "idx": idx, "targets": targets, "ignore_index": -1, "batch_seed": 2000,
        "logits": logits.clone(), "loss": loss.item(), "loss_tensor": loss.clone(),
        "loss_per_token": loss_per_token.clone(),  # shape (B*T,): nanochat flattens before cross_entropy
    }


# ----------------------------------------------------------------------------- 2. optimizer
# base_train.py runs its whole training loop at import, so its three schedule functions are
# copied here verbatim (scripts/base_train.py at 348fbb3, "Set up hyperparameter schedulers"),
# with `args`, `num_iterations` and `weight_decay_scaled` passed in.
def get_lr_multiplier(it, num_iterations, warmup_ratio, warmdown_ratio, final_lr_frac):
    warmup_iters = round(warmup_ratio * num_iterations)
    warmdown_iters = round(warmdown_ratio * num_iterations)
    if it < warmup_iters:
        return (it + 1) / warmup_iters
    elif it <= num_iterations - warmdown_iters:
        return 1.0
    else:
        progress = (num_iterations - it) / warmdown_iters
        return progress * 1.0 + (1 - progress) * final_lr_frac


def get_muon_momentum(it):
    frac = min(it / 300, 1)
    momentum = (1 - frac) * 0.85 + frac * 0.95
    return momentum


def get_weight_decay(it, num_iterations, weight_decay_scaled):
    return weight_decay_scaled * (1 - it / num_iterations)


def eager_first_step(nc, weights, x, y):
    """One step of the same MuonAdamW with nanochat's two fused kernels run as plain Python (the
    functions torch.compile wraps): the step as its code reads, without Inductor's fusion (which
    keeps bf16 intermediates in fp32). Returns the step's gradients and the Muon matrices after it."""
    saved = nc.optim.muon_step_fused, nc.optim.adamw_step_fused
    nc.optim.muon_step_fused = saved[0]._torchdynamo_orig_callable
    nc.optim.adamw_step_fused = saved[1]._torchdynamo_orig_callable
    try:
        model = build_model(nc)
        model.load_state_dict(weights)
        optimizer = model.setup_optimizer(**OPTIM)
        model(x, y).backward()
        muon = {p for g in optimizer.param_groups if g["kind"] == "muon" for p in g["params"]}
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p in muon}
        for group in optimizer.param_groups:  # step 0 of base_train.py's schedules
            group["lr"] = group["initial_lr"] * get_lr_multiplier(0, SCHEDULE["num_iterations"], SCHEDULE["warmup_ratio"],
                                                                  SCHEDULE["warmdown_ratio"], SCHEDULE["final_lr_frac"])
            if group["kind"] == "muon":
                group["momentum"] = get_muon_momentum(0)
                group["weight_decay"] = get_weight_decay(0, SCHEDULE["num_iterations"], OPTIM["weight_decay"])
        optimizer.step()
        return grads, {n: p.detach().clone() for n, p in model.named_parameters() if p in muon}
    finally:
        nc.optim.muon_step_fused, nc.optim.adamw_step_fused = saved


def record_optimizer(nc, weights):
    model = build_model(nc)
    model.load_state_dict(weights)
    optimizer = model.setup_optimizer(**OPTIM)
    names = {p: n for n, p in model.named_parameters()}
    groups, routing = [], {}
    for gi, g in enumerate(optimizer.param_groups):
        info = {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
        info["params"] = [names[p] for p in g["params"]]
        if g["kind"] == "muon":  # _step_muon scales lr by max(1, rows/cols)**0.5
            rows, cols = g["params"][0].shape
            info["shape"] = [rows, cols]
            info["lr_shape_scale"] = max(1.0, rows / cols) ** 0.5
        groups.append(info)
        for n in info["params"]:
            routing[n] = {"group": gi, "kind": g["kind"], "initial_lr": g["initial_lr"]}

    n_iter = SCHEDULE["num_iterations"]
    seqs = [seeded_tokens(3000 + k, (2, 65)) for k in range(n_iter)]
    xs = [s[:, :-1].clone() for s in seqs]
    ys = [s[:, 1:].clone() for s in seqs]
    lrms, momentums, wds, losses, states = [], [], [], [], {}
    for step in range(n_iter):
        loss = model(xs[step], ys[step])
        loss.backward()
        # exactly as base_train.py's training loop
        lrm = get_lr_multiplier(step, n_iter, SCHEDULE["warmup_ratio"], SCHEDULE["warmdown_ratio"],
                                SCHEDULE["final_lr_frac"])
        muon_momentum = get_muon_momentum(step)
        muon_weight_decay = get_weight_decay(step, n_iter, OPTIM["weight_decay"])
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lrm
            if group["kind"] == "muon":
                group["momentum"] = muon_momentum
                group["weight_decay"] = muon_weight_decay
        optimizer.step()
        model.zero_grad(set_to_none=True)
        lrms.append(lrm); momentums.append(muon_momentum); wds.append(muon_weight_decay)
        losses.append(loss.item())
        if step + 1 in SAVED_STEPS:
            states[step + 1] = clone_state(model)
    return {
        **header(),
        "config": dict(MODEL_CONFIG),
        "initial_weights": "model.pth['weights']",
        "optim_kwargs": {**OPTIM, "adam_betas": list(OPTIM["adam_betas"])},
        "schedule": dict(SCHEDULE), "num_iterations": n_iter,
        "dmodel_lr_scale": (MODEL_CONFIG["n_embd"] / 768) ** -0.5,
        "param_groups": groups, "routing": routing,
        "batch_seeds": [3000 + k for k in range(n_iter)], "x": torch.stack(xs), "y": torch.stack(ys),
        "lrm": lrms, "muon_momentum": momentums, "muon_weight_decay": wds,
        "losses": losses,  # loss of step k's forward, before step k's update
        "states": states,  # {step: model state_dict after that step's optimizer.step()}, for SAVED_STEPS
        # the first step again with the kernels uncompiled: its Muon gradients and matrices after it
        **dict(zip(("muon_grads_step1", "muon_eager_step1"), eager_first_step(nc, weights, xs[0], ys[0]))),
    }


# ----------------------------------------------------------------------------- 3. loader
def make_documents(n, seed=4000):
    """n token lists, ids in [1, 510]; lengths ~ lognormal (median 30), clipped to [1, 300]."""
    g = torch.Generator().manual_seed(seed)
    lengths = (math.log(30) + 1.0 * torch.randn(n, generator=g)).exp().round().clamp(1, 300).long()
    return [torch.randint(1, 511, (int(L),), generator=g).tolist() for L in lengths]


class FakeTokenizer:
    """The text of a document is its index; encoding looks the token list up."""
    def __init__(self, docs):
        self.docs = docs

    def get_bos_token_id(self):
        return BOS

    def encode(self, texts, prepend=None, num_threads=None):
        return [[prepend] + self.docs[int(s)] for s in texts]


def write_parquet(folder, docs):
    import pyarrow as pa, pyarrow.parquet as pq
    n_train = len(docs) - LOADER["n_val_docs"]
    files = [(folder / "shard_00000.parquet", range(0, n_train)),            # train (all but the last file)
             (folder / "shard_00001.parquet", range(n_train, len(docs)))]    # val (the last file)
    for path, ids in files:
        pq.write_table(pa.table({"text": [str(i) for i in ids]}), path, row_group_size=LOADER["row_group_size"])
    layout = []
    for path, ids in files:
        pf = pq.ParquetFile(path)
        assert pf.num_row_groups == math.ceil(len(ids) / LOADER["row_group_size"])
        rgs = [[int(t) for t in pf.read_row_group(r).column("text").to_pylist()] for r in range(pf.num_row_groups)]
        layout.append({"file": path.name, "docs": list(ids), "row_groups": rgs})
    return [p for p, _ in files], layout


def run_loader(nc, tokenizer, paths, split, n_batches, dist_info):
    """Run nanochat's loader with its dataset discovery and dist info monkeypatched."""
    dl = nc.dataloader
    saved = dl.list_parquet_files, dl.get_dist_info
    dl.list_parquet_files = lambda: [str(p) for p in paths]
    dl.get_dist_info = lambda: dist_info
    try:
        loader = dl.tokenizing_distributed_data_loader_with_state_bos_bestfit(
            tokenizer, LOADER["B"], LOADER["T"], split, device="cpu")
        out = {"inputs": [], "targets": [], "states": []}
        for _ in range(n_batches):
            x, y, state = next(loader)
            out["inputs"].append(x.clone())  # the loader re-uses its yielded buffers: copy them
            out["targets"].append(y.clone())
            out["states"].append(dict(state))
    finally:
        dl.list_parquet_files, dl.get_dist_info = saved
    return {"inputs": torch.stack(out["inputs"]), "targets": torch.stack(out["targets"]),
            "states": out["states"], "dist_info": list(dist_info)}


def record_loader(nc, scratch):
    docs = make_documents(LOADER["n_docs"])
    paths, layout = write_parquet(scratch, docs)
    tok = FakeTokenizer(docs)
    defaults = {k: v.default for k, v in inspect.signature(
        nc.dataloader.tokenizing_distributed_data_loader_with_state_bos_bestfit).parameters.items()
        if v.default is not inspect.Parameter.empty}
    runs = {}
    for split, n in (("train", LOADER["train_batches"]), ("val", LOADER["val_batches"])):
        runs[f"{split}_ws1"] = run_loader(nc, tok, paths, split, n, (False, 0, 0, 1))
        for rank in (0, 1):
            runs[f"{split}_ws2_rank{rank}"] = run_loader(nc, tok, paths, split, n, (True, rank, rank, 2))
    lengths = torch.tensor([len(d) for d in docs])
    return {
        **header(),
        "B": LOADER["B"], "T": LOADER["T"], "bos": BOS, "device": "cpu",
        "buffer_size": defaults["buffer_size"], "tokenizer_batch_size": defaults["tokenizer_batch_size"],
        "tokenizer_threads": defaults["tokenizer_threads"],
        "doc_seed": 4000, "doc_length_rule": "round(exp(log(30) + randn)) clipped to [1, 300]; ids randint(1, 511)",
        "docs_flat": torch.tensor([t for d in docs for t in d], dtype=torch.int16),
        "docs_offsets": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        "row_group_size": LOADER["row_group_size"], "parquet_layout": layout,
        "text_column": "str(doc index)", "encode": "[bos] + docs[int(text)]",
        "runs": runs,
    }


# ----------------------------------------------------------------------------- 4. bpb
def record_bpb(nc, model, loader_fx):
    val = loader_fx["runs"]["val_ws1"]
    batches = [(val["inputs"][i], val["targets"][i]) for i in range(BPB_STEPS)]
    ys = torch.stack([y for _, y in batches])
    token_bytes = torch.randint(1, 7, (MODEL_CONFIG["vocab_size"],), generator=torch.Generator().manual_seed(5000))
    zero_ids = [t for t in dict.fromkeys(ys.flatten().tolist()) if t != BOS][:2]  # two ids that do occur
    token_bytes[[BOS] + zero_ids] = 0
    bpb = nc.loss_eval.evaluate_bpb(model, batches, BPB_STEPS, token_bytes)
    # evaluate_bpb returns only the ratio; redo its sums alongside (its fast path: no target < 0)
    total_nats, total_bytes = torch.tensor(0.0), torch.tensor(0, dtype=torch.int64)
    with torch.no_grad():
        for x, y in batches:
            loss = model(x, y, loss_reduction="none").view(-1)
            nb = token_bytes[y.view(-1)]
            total_nats += (loss * (nb > 0)).sum()
            total_bytes += nb.sum()
    assert bpb == total_nats.item() / (math.log(2) * total_bytes.item())
    return {
        **header(),
        "config": dict(MODEL_CONFIG), "weights": "model.pth['weights'] (before any training step)",
        "token_bytes": token_bytes, "token_bytes_seed": 5000, "zero_byte_ids": [BOS] + zero_ids,
        "steps": BPB_STEPS, "source": "loader.pth['runs']['val_ws1'] batches 0..2",
        "x": torch.stack([x for x, _ in batches]), "y": ys,
        "bpb": bpb, "total_nats": total_nats.item(), "total_bytes": total_bytes.item(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nanochat", type=Path, required=True, help="checkout (git archive) of nanochat 348fbb3")
    ap.add_argument("--out", type=Path, required=True, help="folder for the .pth fixtures")
    args = ap.parse_args()
    torch.set_num_threads(NUM_THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        nc = load_nanochat(args.nanochat, scratch)
        model, model_fx = record_model(nc)
        optim_fx = record_optimizer(nc, model_fx["weights"])
        loader_fx = record_loader(nc, scratch)
        bpb_fx = record_bpb(nc, model, loader_fx)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, fx in [("model", model_fx), ("optimizer", optim_fx), ("loader", loader_fx), ("bpb", bpb_fx)]:
        torch.save(fx, args.out / f"{name}.pth")
        torch.load(args.out / f"{name}.pth", weights_only=True)  # the tests load with weights_only
        print(f"{name}.pth: {(args.out / f'{name}.pth').stat().st_size / 1e6:.2f} MB")
    print(f"model loss {model_fx['loss']:.6f}; train losses {[round(l, 6) for l in optim_fx['losses']]}")
    print(f"bpb {bpb_fx['bpb']:.6f} (nats {bpb_fx['total_nats']:.4f}, bytes {bpb_fx['total_bytes']})")


if __name__ == "__main__":
    main()
