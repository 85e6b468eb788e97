"""One rule for "the reference": the table's ratios, the quality scores and the report all ask
``store.reference.choose_reference``."""

from __future__ import annotations

from typing import Any

import pytest

from diffquant.quality.data import RunInfo, find_reference
from diffquant.store import RunRow, summary_rows
from diffquant.store.reference import choose_reference

CPU = {"steps": 2, "height": 64, "width": 64, "device": "cpu", "prompts": ["a"], "seeds": [0]}


def _row(i: int, recipe: str, sweep: str, finished: str, rss: float, **settings: Any) -> RunRow:
    return RunRow(id=i, sweep_id=sweep, model="m", recipe=recipe, recipe_hash=f"h{i}", settings={**CPU, **settings},
                  status="ok", error=None, metrics={"load.rss_mib": rss}, env={}, started_at=finished,
                  finished_at=finished, run_key=f"k{i}")


RUNS = [
    _row(1, "bf16", "s1", "2026-01-01T00:00:01Z", 100.0),
    _row(2, "bf16", "s1", "2026-01-01T00:00:09Z", 200.0),  # the later bf16 of s1
    _row(3, "bnb-nf4", "s1", "2026-01-01T00:00:05Z", 50.0),
    _row(4, "bf16", "s2", "2026-01-02T00:00:00Z", 400.0),  # most recent overall, other sweep
    _row(5, "torchao-int8wo", "s3", "2026-01-03T00:00:00Z", 80.0, steps=9),  # no bf16 with its settings
]


def test_rule() -> None:
    by_id = {r.id: r for r in RUNS}
    assert choose_reference(by_id[3], RUNS, "bf16")[0] is by_id[2]  # same sweep beats more recent
    assert choose_reference(by_id[1], RUNS, "bf16")[0] is by_id[1]  # a reference run is its own
    assert choose_reference(by_id[3], RUNS, " bf16 ")[0] is by_id[2]  # recipes compared canonically
    lone = _row(6, "bnb-nf4", "s9", "2026-01-04T00:00:00Z", 1.0)
    assert choose_reference(lone, RUNS, "bf16")[0] is by_id[4]  # other sweeps: the most recent
    ref, why = choose_reference(lone, RUNS, "bf16", same_sweep_only=True)
    assert ref is None and "same sweep" in why
    ref, why = choose_reference(by_id[5], RUNS, "bf16")
    assert ref is None and "9 steps" in why
    assert "no successful run" in choose_reference(by_id[3], RUNS, "fp16")[1]


def test_summary_ratios_use_the_rule() -> None:
    rows = {r["id"]: r for r in summary_rows(RUNS, "bf16")}
    assert rows[3]["after_load_mib.ratio"] == pytest.approx(50.0 / 200.0)  # against run 2, not 1 or 4
    assert rows[1]["is_reference"] and rows[2]["is_reference"] and not rows[3]["is_reference"]
    assert rows[5]["after_load_mib.ratio"] is None


def test_quality_uses_the_rule_among_runs_with_images() -> None:
    image = object()
    infos = [RunInfo(r.id, r.model, r.recipe, r.settings, sweep_id=r.sweep_id, finished_at=r.finished_at,
                     images=() if r.id == 2 else (image,)) for r in RUNS]  # type: ignore[arg-type]
    ref, _ = find_reference(infos[2], infos, "bf16")
    assert ref is infos[0]  # run 2 saved no images: the rule among the rest picks run 1 (same sweep)
