"""Scoring a results database against its reference run, stored in the quality tables."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest
from test_quality_fixtures import PROMPTS, SEEDS, make_db

from diffquant.errors import DiffquantError
from diffquant.quality import score_database, score_db
from diffquant.quality.data import RunInfo, find_reference
from diffquant.quality.scoring import BootstrapSettings
from diffquant.quality.store import QUALITY_SCHEMA_VERSION, read_image_quality, read_quality

FAST = ["psnr", "ssim", "ms-ssim", "lpips", "latent-rel-error"]


def _by_recipe(db_path: Path) -> dict[str, dict[str, object]]:
    from diffquant.store import ResultsDB

    with ResultsDB(db_path) as db:
        recipes = {r.id: r.recipe for r in db.runs()}
        quality = read_quality(db.connection)
    return {recipes[run_id]: rows for run_id, rows in quality.items()}  # type: ignore[misc]


def test_score_database_ranks_coarser_quantization_lower(tmp_path: Path) -> None:
    db_path = make_db(tmp_path)
    assert score_database(db_path, metrics=FAST) is None
    q = _by_recipe(db_path)
    assert "bnb-nf4" not in q  # failed runs are not scored
    assert q["bf16"]["psnr"].status == "reference"  # type: ignore[attr-defined]
    int8, int4 = q["quanto-int8"], q["quanto-int4"]
    for name in ("psnr", "ssim", "ms-ssim"):
        assert int8[name].status == "ok" and int8[name].mean > int4[name].mean, name  # type: ignore[attr-defined]
    assert int8["latent-rel-error"].mean < int4["latent-rel-error"].mean  # type: ignore[attr-defined]
    assert int8["latent-rel-error"].mean == pytest.approx(0.02, rel=0.3)  # type: ignore[attr-defined]
    psnr = int8["psnr"]
    assert psnr.n == len(PROMPTS) * len(SEEDS) and psnr.unit == "dB" and psnr.higher_is_better  # type: ignore[attr-defined]
    assert psnr.ci_low <= psnr.mean <= psnr.ci_high  # type: ignore[attr-defined]
    assert "3 scales" in (int8["ms-ssim"].reason or "")  # type: ignore[attr-defined]  # 64x64: adapted
    # identical pixels (compile only) -> PSNR inf, stored and read back as inf
    assert math.isinf(q["bf16+compile"]["psnr"].mean)  # type: ignore[attr-defined]
    assert q["bf16+compile"]["ssim"].mean == pytest.approx(1.0)  # type: ignore[attr-defined]
    lpips = int8["lpips"]
    assert lpips.status in ("ok", "unavailable")  # type: ignore[attr-defined]
    if lpips.status == "unavailable":  # type: ignore[attr-defined]
        assert lpips.mean is None and lpips.reason  # type: ignore[attr-defined]


def test_rescoring_replaces_rows_and_keeps_schema_version(tmp_path: Path) -> None:
    db_path = make_db(tmp_path)
    score_database(db_path, metrics=["psnr"])
    score_database(db_path, metrics=["psnr", "ssim"])
    conn = sqlite3.connect(db_path)
    try:
        n_images = len(PROMPTS) * len(SEEDS)
        # psnr + ssim per image, for the 3 non-reference ok runs
        assert conn.execute("SELECT COUNT(*) FROM quality_image").fetchone()[0] == 3 * 2 * n_images
        assert conn.execute("SELECT COUNT(*) FROM quality_run").fetchone()[0] == 4 * 2
        assert conn.execute("SELECT value FROM quality_meta WHERE key='schema_version'").fetchone()[0] == str(
            QUALITY_SCHEMA_VERSION)
        per_image = read_image_quality(conn)
        assert all(set(v) == {"psnr", "ssim"} for v in per_image.values())
    finally:
        conn.close()


def test_incremental_scoring_skips_current_scores(tmp_path: Path) -> None:
    db_path = make_db(tmp_path)
    first = score_db(db_path, metrics=["psnr", "lpips"])
    assert len(first) == 8
    again = score_db(db_path, metrics=["psnr", "lpips"], force=False)
    # psnr is current everywhere; lpips is retried where it was unavailable
    assert {r.metric for r in again} <= {"lpips"}
    assert all(r.status != "ok" for r in again) or not again
    assert len(score_db(db_path, metrics=["psnr"], force=False, bootstrap=BootstrapSettings(resamples=100))) == 4
    assert len(score_db(db_path, metrics=["psnr"])) == 4  # force (the default) recomputes


def test_no_reference_metrics_get_a_paired_delta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reference-free metric (here a fake one: mean brightness) is scored on every run, the
    reference included, with the paired difference to the reference."""
    from diffquant.quality import registry

    def make_brightness(options):
        import numpy as np

        return lambda batch: [float(np.asarray(im).mean()) for im in batch.images]

    import sys
    import types

    mod = types.ModuleType("fake_brightness")
    mod.make = make_brightness  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_brightness", mod)
    fake = registry.MetricRegistry()
    for info in registry.METRICS:
        fake.register(info)
    fake.register(registry.MetricInfo("brightness", "fake_brightness:make", True, False, "", "test"))
    monkeypatch.setattr(registry, "METRICS", fake)
    monkeypatch.setattr("diffquant.quality.METRICS", fake)
    monkeypatch.setattr("diffquant.quality.scoring.METRICS", fake)
    db_path = make_db(tmp_path)
    results = score_db(db_path, metrics=["brightness"])
    by_run = {r.run_id: r for r in results}
    assert all(r.status == "ok" for r in results) and len(results) == 4
    ref_run = next(r for r in results if r.delta is None)
    assert ref_run.estimate is not None
    deltas = [r.delta for r in by_run.values() if r.delta is not None]
    assert len(deltas) == 3 and all(d.ci_low <= d.mean <= d.ci_high for d in deltas)


def test_missing_reference_is_unavailable_with_reason(tmp_path: Path) -> None:
    db_path = make_db(tmp_path)
    results = score_db(db_path, reference="fp16", metrics=["psnr"])
    assert results and all(r.status == "unavailable" for r in results)
    assert "no successful run of the reference recipe 'fp16'" in (results[0].reason or "")


def test_user_errors(tmp_path: Path) -> None:
    with pytest.raises(DiffquantError, match="No results database"):
        score_database(tmp_path / "nope.db")
    assert not (tmp_path / "nope.db").exists()
    db_path = make_db(tmp_path, with_failure=False)
    with pytest.raises(DiffquantError, match="Did you mean: 'psnr'"):
        score_database(db_path, metrics=["psrn"])


def test_reference_must_share_settings_and_device() -> None:
    base = {"steps": 2, "height": 64, "width": 64, "device": "cpu"}
    ref_cpu = RunInfo(1, "m", "bf16", dict(base), images=(object(),))  # type: ignore[arg-type]
    ref_gpu = RunInfo(2, "m", "bf16", {**base, "device": "cuda"}, images=(object(),))  # type: ignore[arg-type]
    run = RunInfo(3, "m", "quanto-int8", {**base, "device": "cuda", "repeats": 5})
    assert find_reference(run, [ref_cpu, ref_gpu], "bf16")[0] is ref_gpu
    other = RunInfo(4, "m", "quanto-int8", {**base, "steps": 4})
    ref, why = find_reference(other, [ref_cpu, ref_gpu], "bf16")
    assert ref is None and "same settings" in why
