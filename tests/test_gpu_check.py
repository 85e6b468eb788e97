"""benchmarks/gpu_check.py's CPU dry run: every recipe builds, quantizes and steps a tiny FLUX
transformer (+ T5), and the JSON holds each recipe's figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
RECIPES = ("bf16", "bnb-nf4", "torchao-int8wo", "gguf-q4_k", "fp8-layerwise")


def run_check(tmp_path: Path, *extra: str, timeout: float = 600) -> dict:
    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("OUT", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--steps", "1",
                           "--out", str(out), *extra], capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| recipe |" in proc.stdout and "Seed figures are a whole FluxPipeline" in proc.stdout
    return json.loads(out.read_text())


def check_figures(data: dict) -> None:
    results = data["recipes"]
    assert tuple(results) == RECIPES
    for name, r in results.items():
        assert r["status"] == "ok", (name, r.get("error"))
        assert r["weights.total_bytes"] > 0 and r["weights.transformer.bytes"] > 0, name
        assert r["step.latency_s.p50"] > 0 and r["first_step.latency_s"] > 0 and r["step.latency_s.n"] == 1, name
        assert r["load.rss_mib"] > 0 and r["gen.peak_rss_mib"] > 0, name
        assert r["step.output_finite"] == 1, name
    bits = {name: r["weights.transformer.bits_per_weight"] for name, r in results.items()}
    # Each recipe really changed the transformer's storage (a recipe silently not applied stays at 16).
    assert bits["bf16"] == pytest.approx(16.0)
    assert bits["bnb-nf4"] < 6 and bits["gguf-q4_k"] < 8 and bits["torchao-int8wo"] < 10
    assert bits["fp8-layerwise"] < 12
    # T5 is quantized by bnb and torchao only (GGUF and fp8 layerwise apply to the denoiser).
    t5 = {name: r["weights.text_encoder_2.bits_per_weight"] for name, r in results.items()}
    assert t5["bnb-nf4"] < 12 and t5["torchao-int8wo"] < 12  # its bf16 embedding table stays
    assert t5["gguf-q4_k"] == pytest.approx(16.0) and t5["fp8-layerwise"] == pytest.approx(16.0)
    assert data["settings"]["device"] == "cpu" and data["seed"]["figures_gib_gib_s"]["bf16"][0] == 31.447


def test_cpu_dry_run_has_every_recipes_figures(tmp_path: Path) -> None:
    check_figures(run_check(tmp_path, "--isolation", "none"))


@pytest.mark.slow
def test_cpu_dry_run_with_a_process_per_recipe(tmp_path: Path) -> None:
    check_figures(run_check(tmp_path))


def test_unknown_recipe_is_refused_with_the_choices() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--recipes", "bf16,bnb-nf5"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "bnb-nf5" in proc.stderr and "gguf-q4_k" in proc.stderr
