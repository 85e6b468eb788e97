"""benchmarks/bench_cpu_lowbit.py stays runnable: its per-layer part on a small shape, its CIs, and
the renderer over what it writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from scriptload import load_script

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("gguf")


def test_median_ci_brackets_the_median() -> None:
    bench = load_script("benchmarks/bench_cpu_lowbit.py")
    cell = bench.median_ci([1.0, 2.0, 3.0, 4.0, 100.0])
    assert cell["median"] == 3.0 and cell["ci_low"] <= 3.0 <= cell["ci_high"] and cell["n"] == 5
    assert bench.median_ci([2.0] * 5)["ci_high"] == 2.0


def test_layer_part_and_render(tmp_path) -> None:
    bench = load_script("benchmarks/bench_cpu_lowbit.py")
    render = load_script("scripts/render_cpu_lowbit.py")
    rows = bench.bench_layers(5, ("Q4_K", "Q8_0"), (16,), shapes=((256, 512),))
    kinds = {(r["type"], r["what"]) for r in rows}
    assert {("bf16", "gemm"), ("Q4_K", "dequant"), ("Q4_K", "cpu_kernel"), ("Q8_0", "diffusers")} <= kinds
    from diffquant.lowbit.kernel import variant_supported

    assert (("Q8_0", "dequant_variant") in kinds) == variant_supported("avx512")
    text = render.render({"layers": rows, "repeats": 5})
    assert "| 256×512 | 16 |" in text and "Q8_0 kernel (×bf16)" in text
