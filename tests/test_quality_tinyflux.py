"""End to end on zoo:tiny-flux: ``diffquant bench`` (which scores quality and writes report.html and
grid.png by calling this package), then the stored scores: 4-bit weights lose more than 8-bit."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffquant.cli import main
from diffquant.quality.store import read_quality
from diffquant.store import ResultsDB

pytestmark = pytest.mark.slow

TINY = ["--prompt", "a red circle on a blue background", "--prompt", "a small green square",
        "--seeds", "0", "--steps", "2", "--size", "64x64", "--repeats", "1", "--device", "cpu", "--timeout", "300"]


@pytest.fixture(scope="module")
def bench_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("tinyflux") / "results.db"
    assert main(["bench", "zoo:tiny-flux", "--recipes", "quanto-int8,quanto-int4", "--db", str(db), *TINY]) == 0
    return db


def test_int4_scores_worse_than_int8(bench_db: Path) -> None:
    with ResultsDB(bench_db) as db:
        recipes = {r.id: r.recipe for r in db.runs()}
        assert sorted(recipes.values()) == ["bf16", "quanto-int4", "quanto-int8"]
        assert all(r.ok for r in db.runs()), [r.error for r in db.runs()]
        quality = {recipes[k]: v for k, v in read_quality(db.connection).items()}
    assert quality["bf16"]["psnr"].status == "reference"
    int8, int4 = quality["quanto-int8"], quality["quanto-int4"]
    for name in ("psnr", "ssim"):
        assert int8[name].status == int4[name].status == "ok"
        assert int8[name].mean > int4[name].mean, (name, int8[name].mean, int4[name].mean)
    assert int8["latent-rel-error"].mean < int4["latent-rel-error"].mean
    assert int4["psnr"].n == 2 and int4["psnr"].ci_low <= int4["psnr"].mean <= int4["psnr"].ci_high


def test_bench_wrote_report_and_grid(bench_db: Path) -> None:
    html = (bench_db.parent / "report.html").read_text(encoding="utf-8")
    assert "quanto-int4" in html and "Memory after loading" in html and "<svg" in html
    assert (bench_db.parent / "grid.png").stat().st_size > 1000
    assert (bench_db.parent / "report_files" / "grid-0.png").exists()
