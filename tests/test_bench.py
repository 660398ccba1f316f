"""The benchmark's measurement functions run and report what they say (no timing asserts: speed
claims live in `python -m nanogpt_core bench`, not in tests)."""

import pytest
import torch

from nanogpt_core import attention as A
from nanogpt_core.lab import bench


def test_attention_scaling_counts_the_score_matrix_naive_keeps():
    rows = bench.attention_scaling(seq_lens=(16, 32), heads=2, head_dim=8, repeats=1)
    assert [r["T"] for r in rows] == [16, 32]
    for r in rows:
        assert r["naive_seconds"] > 0 and r["sdpa_seconds"] > 0
        assert r["naive_saved_bytes"] >= r["score_matrix_bytes"] > r["sdpa_saved_bytes"]


def test_compiled_attention_crossover_reports_both_kernels_per_window():
    rows = bench.compiled_attention_crossover(seq_lens=(16,), tokens=32, heads=1, head_dim=8, repeats=1)
    assert [(r["T"], r["window"]) for r in rows] == [(16, 8), (16, 16)]
    for r in rows:
        assert r["formula_ms"] > 0 and r["sdpa_ms"] > 0
        assert abs(r["formula_speedup"] - r["sdpa_ms"] / r["formula_ms"]) < 1e-12


def test_bench_variants_separate_the_attention_choice_inside_the_compiled_graph():
    stage, switches = bench.VARIANTS["compile, fused SDPA kept"]
    assert stage == "compile" and switches == {"attn_backend": "sdpa"}
    assert bench.VARIANTS["compile"] == ("compile", {})
    assert A.COMPILED_FORMULA_MAX_T >= 1


def test_stage_speeds_interleaves_rounds_and_reports_the_median():
    tiny = dict(n_layer=1, n_head=2, n_embd=32, seq_len=16, batch_size=2)
    variants = {"gpt2": ("gpt2", {}), "windows": ("flash-attention", {})}
    rows = bench.stage_speeds(variants, steps=2, warmup=1, rounds=3, **tiny)
    assert [r["variant"] for r in rows] == ["gpt2", "windows"]
    for r in rows:
        assert len(r["rounds"]) == 3 and all(x > 0 for x in r["rounds"])
        assert r["tokens_per_second"] == sorted(r["rounds"])[1]
        assert r["steps"] == 3 and len(r["losses"]) == 3
    assert rows[1]["attn_backend"] == "auto"


def test_op_kinds_sort_profiler_names():
    assert bench.op_kind("aten::addmm") == "matmul" and bench.op_kind("aten::bmm") == "matmul"
    assert bench.op_kind("aten::_scaled_dot_product_flash_attention_for_cpu") == "fused attention kernel"
    assert bench.op_kind("## Call CompiledFxGraph f5xyz ##") == "Inductor's fused kernels"
    assert bench.op_kind("aten::_fused_adamw_") == "optimizer"
    assert bench.op_kind("aten::gelu") == "other ops"


def test_step_profile_accounts_for_most_of_the_step():
    tiny = dict(n_layer=1, n_head=2, n_embd=32, seq_len=16, batch_size=2)
    p = bench.step_profile("gpt2", steps=2, warmup=1, **tiny)
    kinds = p["ms_per_step"]
    assert kinds["matmul"] > 0 and kinds["other ops"] > 0 and kinds["Inductor's fused kernels"] == 0
    assert 0 < sum(kinds.values()) <= 1.5 * p["wall_ms_per_step"]  # profiler overhead adds a little


def test_matmul_gflops_reports_both_dtypes():
    rates = bench.matmul_gflops(n=64, repeats=1)
    assert set(rates) == {"fp32", "bf16"} and all(r > 0 for r in rates.values())


def test_attention_backends_compare_each_backend_with_the_fp32_formula():
    cases = ((32, None), (32, 7), (8, 16))  # a full window, a short one, a window longer than the row
    rows = bench.attention_backends(cases=cases, batch=1, heads=2, head_dim=16, repeats=1, device="cpu")
    assert [(r["T"], r["window"]) for r in rows] == [(32, 32), (32, 7), (8, 16)]
    for r in rows:
        assert r["fa3"] == A.load_fa3()[1] and "fa3_ms" not in r  # no FA3 on a CPU, and the row says why
        for backend in ("naive", "sdpa"):
            assert r[f"{backend}_ms"] > 0
            # bf16 rounding, not a different set of keys (a wrong window is off by O(1))
            assert 0 < r[f"{backend}_output_error"] < 3e-2 and 0 < r[f"{backend}_grad_error"] < 6e-2


def test_attention_backends_error_exposes_a_wrong_window(monkeypatch):
    full_window_sdpa = A.sdpa_attention
    monkeypatch.setattr(bench, "sdpa_attention", lambda q, k, v, window: full_window_sdpa(q, k, v, None))
    row, = bench.attention_backends(cases=((32, 4),), batch=1, heads=2, head_dim=16, repeats=1, device="cpu")
    assert row["naive_output_error"] < 3e-2 < 0.2 < row["sdpa_output_error"]


def test_gpu_variants_are_the_stages_that_differ_on_a_gpu():
    assert list(bench.GPU_VARIANTS) == ["gpt2", "flash-attention", "flash-attention + bf16", "compile"]
    assert all(bench.GPU_VARIANTS[k] == bench.VARIANTS[k] for k in bench.GPU_VARIANTS)
    tiny = dict(n_layer=1, n_head=2, n_embd=32, seq_len=16, batch_size=2, vocab_size=512)
    rows = bench.stage_speeds({"gpt2": bench.GPU_VARIANTS["gpt2"]}, steps=1, warmup=1, rounds=1, scale="gpu", **tiny)
    assert rows[0]["steps"] == 2 and rows[0]["tokens_per_second"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpu_bench_without_a_gpu_says_what_to_run_instead(capsys):
    from nanogpt_core.__main__ import main

    with pytest.raises(NotImplementedError, match="needs a CUDA GPU"):
        bench.run_gpu_bench(steps=1, warmup=1)
    assert main(["bench", "--scale", "gpu"]) == 2
    assert "on a CPU run `python -m nanogpt_core bench`" in capsys.readouterr().err


def test_bench_command_refuses_an_untimed_setup(capsys):
    from nanogpt_core.__main__ import main

    assert main(["bench", "--warmup", "0"]) == 2
    assert "the first step compiles and is never timed" in capsys.readouterr().err
    assert main(["bench", "--scale", "gpu", "--steps", "0"]) == 2
    assert "--steps=0 must be at least 1" in capsys.readouterr().err
