"""The benchmark's measurement functions run and report what they say (no timing asserts: speed
claims live in `python -m nanogpt_core bench`, not in tests)."""

from nanogpt_core import attention as A
from nanogpt_core import bench


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
