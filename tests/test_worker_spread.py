"""benchmarks/worker_spread.py's table: the ratio and CI of each fresh worker pair, and whether every
pair of CIs overlaps — "no" for two workers whose calls disagree (the negative control)."""

from __future__ import annotations

from typing import Any

from scriptload import load_script


def _row(bench: Any, reference_calls: list[float], recipe_calls: list[float]) -> dict[str, Any]:
    ref = {"call.latency_s.samples": reference_calls, "call.latency_s.p50": sorted(reference_calls)[2],
           "call.minor_faults.p50": 1000.0, "host.loadavg_1m.max": 1.9}
    run = {"call.latency_s.samples": recipe_calls, "call.latency_s.p50": sorted(recipe_calls)[2],
           "call.minor_faults.p50": 90000.0, "host.loadavg_1m.max": 2.0}
    return {"bf16": ref, "bnb-int8": run, "ratio": bench.ratio_with_ci(run, ref)}


def test_overlapping_and_disjoint_intervals() -> None:
    bench = load_script("benchmarks/worker_spread.py")
    base = [1.0, 1.02, 0.98, 1.01, 0.99]
    agree = {"reference": "bf16", "recipe": "bnb-int8",
             "rows": [_row(bench, base, [3.0, 3.05, 2.95, 3.02, 2.98]), _row(bench, base, [3.01, 3.04, 2.97, 3.0, 2.99])]}
    table = bench.render(agree)
    assert "every pair of CIs overlaps: yes" in table and "| 90,000" not in table and "1,000 / 90,000" in table
    ratio = agree["rows"][0]["ratio"]
    assert ratio["low"] <= ratio["ratio"] <= ratio["high"] and abs(ratio["ratio"] - 3.0) < 0.05
    disagree = {**agree, "rows": [agree["rows"][0], _row(bench, base, [3.9, 3.95, 3.85, 3.92, 3.88])]}
    assert "every pair of CIs overlaps: no" in bench.render(disagree)
