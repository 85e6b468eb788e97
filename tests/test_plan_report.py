"""The report's plan additions: the memory x latency x quality Pareto plot and "fits in N GB"."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_quality_fixtures import RUNS, make_db

MIB = 2**20


@pytest.fixture(scope="module")
def scored_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffquant.quality import score_database

    db = make_db(tmp_path_factory.mktemp("db"))
    score_database(db, metrics=["psnr"])
    return db


def test_fits_rows_follow_each_runs_need(scored_db: Path) -> None:
    from diffquant.report.collect import collect
    from diffquant.report.fits import fits_rows

    sweep = collect(scored_db).sweeps[0]
    rows = fits_rows(sweep)
    # need = max(load peak = 1.2 x load, generation peak) of each fixture run, in MiB
    need = {r: max(load * 1.2, peak) * MIB for r, (_, _, load, peak, _, _) in RUNS.items()}
    assert rows, "no size fits anything"
    for row in rows:
        size = float(row["budget"].split()[0]) * 2**30
        assert set(row["recipes"].split(", ")) == {r for r, n in need.items() if n <= size}
    assert rows[-1]["count"] == rows[-1]["total"] == len(RUNS)
    # the reference, or bf16+compile: identical images (PSNR inf) and faster
    assert rows[-1]["best"] == "bf16+compile"
    smaller = [row for row in rows if "bf16" not in row["recipes"].split(", ")]
    # the smallest size (1 GB = 2^30 bytes) holds both quanto runs: the best is the 8-bit one (higher PSNR)
    assert smaller and smaller[0]["recipes"] == "quanto-int8, quanto-int4" and smaller[0]["best"] == "quanto-int8"


def test_report_has_the_pareto_plot_and_fits_section(scored_db: Path, tmp_path: Path) -> None:
    from diffquant.report import write_report

    html = write_report(scored_db, tmp_path / "report.html").read_text()
    assert "Fits in N GB" in html
    assert "Pareto-optimal ringed" in html
