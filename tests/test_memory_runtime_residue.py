"""Real workers on zoo:shapes (the demo's model, 17 MiB of bf16 weights, 64x64, a 32-token T5):
the runtime's per-call caches (oneDNN's and ideep's primitive caches, ~20 MiB, the same for every
recipe) must not leak back into the model's own generation peak.

At this size the model's memory beside its weights (activations, per-call dequantization, pipeline
objects) is a few MiB, well below the runtime's caches: so each recipe's peak must stay within half
the measured residue of its weight bytes - a figure with the caches counted fails that (negative
control on the same runs) - and bnb-nf4's peak must sit below bf16's by at least half their weight
bytes' difference. Slow: two workers (~1 minute)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from diffquant.cli import main
from diffquant.store import ResultsDB

MIB = 1024 * 1024
ARGS = ["--seeds", "0", "--steps", "2", "--repeats", "1", "--device", "cpu", "--timeout", "300", "--no-report",
        "--no-quant-cache"]


def _beside_weights(m: dict[str, Any], key: str) -> float:
    return m[key] - m["weights.total_bytes"] / MIB


@pytest.mark.slow
def test_runtime_caches_stay_out_of_the_model_peak(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    prompt = ["--prompt", "a red circle on a white background"]
    assert main(["bench", "zoo:shapes", "--recipes", "bf16,bnb-nf4", "--db", str(db), *prompt, *ARGS]) == 0
    with ResultsDB(db) as store:
        runs = {r.recipe: r.metrics for r in store.runs()}
    for recipe, m in runs.items():
        residue = m["gen.runtime_residue_mib"]
        assert residue is not None and residue > 5, (recipe, residue)  # measured, and there is some
        assert m["gen.peak_above_baseline_rss_mib"] - m["gen.model_peak_rss_mib"] == pytest.approx(residue)
        assert _beside_weights(m, "gen.model_peak_rss_mib") <= residue / 2, (recipe, m["gen.model_peak_rss_mib"])
        # negative control: counting the runtime's caches as the model's fails the same check
        assert _beside_weights(m, "gen.peak_above_baseline_rss_mib") > residue / 2
    bf16, nf4 = runs["bf16"], runs["bnb-nf4"]
    saved = (bf16["weights.total_bytes"] - nf4["weights.total_bytes"]) / MIB
    assert nf4["gen.model_peak_rss_mib"] <= bf16["gen.model_peak_rss_mib"] - saved / 2
