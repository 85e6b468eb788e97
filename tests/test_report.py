"""The comparison grid and the HTML report, from a synthetic results database."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from PIL import Image
from test_quality_fixtures import PROMPTS, RUNS, SEEDS, make_db

from diffquant.cli import main
from diffquant.errors import DiffquantError
from diffquant.quality import score_database
from diffquant.report import write_grid, write_report
from diffquant.report.format import counter_label, counter_unit, fmt_number, format_estimate
from diffquant.report.plots import Point, pareto_front

METRICS = ["psnr", "ssim", "latent-rel-error", "lpips"]


@pytest.fixture(scope="module")
def scored_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = make_db(tmp_path_factory.mktemp("db"))
    score_database(db, metrics=METRICS)
    return db


def test_grid_has_a_column_per_recipe_and_a_row_per_image(scored_db: Path, tmp_path: Path) -> None:
    from diffquant.report.grid import LABEL_W, PAD, cell_size

    out = write_grid(scored_db, tmp_path / "sub" / "grid.png")
    assert out.exists() and not list(out.parent.glob(".*tmp"))
    with Image.open(out) as img:
        cw, ch, factor = cell_size(64, 64)
        assert factor == 3 and (cw, ch) == (192, 192)
        assert img.width == LABEL_W + len(RUNS) * (cw + PAD) + PAD
        assert img.height > len(PROMPTS) * len(SEEDS) * ch


def test_report_is_self_contained_with_table_plots_and_images(scored_db: Path, tmp_path: Path) -> None:
    out = write_report(scored_db, tmp_path / "report.html")
    html = out.read_text(encoding="utf-8")
    files = tmp_path / "report_files"
    assert (files / "grid-0.png").exists()
    assert len(list(files.glob("run*-p*-s*.png"))) == len(RUNS) * len(PROMPTS) * len(SEEDS)
    for heading in ("Memory after loading", "Peak memory", "Inference time", "Compile time"):
        assert heading in html
    # every figure carries its counter and unit
    assert "gen.peak_rss_mib" in html and "peak RSS, GiB" in html and "RSS, MiB" in html and "latency p50, s" in html
    assert "×0.58" in html  # int8 memory after loading: 520 / 900
    assert html.count("<svg") >= 2 and "Pareto front" in html
    assert "41." in html and "dB [" in html  # PSNR of the int8 run with its CI
    assert "∞ dB" in html  # the compiled run's pixels are identical
    assert "bitsandbytes needs a CUDA device" in html  # the failed run and its reason
    assert "Environment and versions" in html and "2.13.0" in html
    assert "LPIPS" in html and ("unavailable" in html.lower())
    # nothing is fetched from anywhere: no external scripts, styles or images
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"https?:", html)
    assert "cdn" not in html.lower()


def test_cuda_sweep_names_cuda_counters(tmp_path: Path) -> None:
    db = make_db(tmp_path, with_failure=False, device="cuda")
    html = write_report(db, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "CUDA reserved, GiB" in html and "CUDA max reserved, GiB" in html
    assert "gen.cuda_max_reserved_mib" in html and "21.875 GiB" in html  # 1400 MiB x 16
    figures = html[html.index("-figures"):html.index("</table>", html.index("-figures"))]
    assert "RSS" not in figures  # the seed's table uses the CUDA counters (RSS stays in the details)


def test_report_inline_is_one_file(scored_db: Path, tmp_path: Path) -> None:
    out = write_report(scored_db, tmp_path / "one.html", inline=True)
    assert not (tmp_path / "one_files").exists()
    html = out.read_text(encoding="utf-8")
    assert 'src="data:image/png;base64,' in html


def test_report_rewrite_replaces_the_files_folder(scored_db: Path, tmp_path: Path) -> None:
    write_report(scored_db, tmp_path / "r.html")
    stale = tmp_path / "r_files" / "stale.png"
    stale.write_bytes(b"x")
    write_report(scored_db, tmp_path / "r.html")
    assert not stale.exists() and (tmp_path / "r_files" / "grid-0.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "r_files"]  # no temporary leftovers


def test_unscored_database_says_so(tmp_path: Path) -> None:
    db = make_db(tmp_path)
    html = write_report(db, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Not scored yet" in html and "diffquant score" in html


def test_empty_database(tmp_path: Path) -> None:
    from diffquant.store import ResultsDB

    with ResultsDB(tmp_path / "empty.db"):
        pass
    html = write_report(tmp_path / "empty.db", tmp_path / "report.html").read_text(encoding="utf-8")
    assert "holds no runs yet" in html
    with pytest.raises(DiffquantError, match="nothing to put in a grid"):
        write_grid(tmp_path / "empty.db", tmp_path / "grid.png")
    with pytest.raises(DiffquantError, match="No results database"):
        write_report(tmp_path / "missing.db", tmp_path / "x.html")


def test_cli_commands(scored_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--db", str(scored_db), "-o", str(tmp_path / "c.html")]) == 0
    assert main(["grid", "--db", str(scored_db), "-o", str(tmp_path / "c.png")]) == 0
    assert main(["score", "--db", str(scored_db), "--metrics", "psnr", "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    assert "quanto-int4" in out and "dB [" in out
    assert main(["score", "--db", str(tmp_path / "nope.db")]) == 2
    assert main(["score", "--list-metrics"]) == 0
    assert "higher is better" in capsys.readouterr().out


def test_pareto_front() -> None:
    pts = [Point("bf16", 10, math.inf, True), Point("int8", 6, 40), Point("int4", 3, 25),
           Point("bad", 7, 30), Point("compile", 11, math.inf)]
    assert [p.label for p in pareto_front(pts, higher_is_better=True)] == ["int4", "int8", "bf16"]
    lower = [Point("a", 1, 0.5), Point("b", 2, 0.1), Point("c", 3, 0.2), Point("ref", 4, 0.0)]
    assert [p.label for p in pareto_front(lower, higher_is_better=False)] == ["a", "b", "ref"]


def test_formatting_names_counters_and_units() -> None:
    assert counter_label("load.rss_anon_mib") == "RSS anon" and counter_unit("load.rss_anon_mib") == "MiB"
    assert counter_label("gen.cuda_max_reserved_mib") == "CUDA max reserved"
    assert counter_label("call.latency_s.p50") == "latency p50" and counter_unit("call.latency_s.p50") == "s"
    assert counter_unit("call.latency_s.n") == ""
    assert fmt_number(math.inf, "dB") == "∞ dB" and fmt_number(None) == "—"
    assert format_estimate(31.2345, 30.8, 31.7, "dB") == "31.23 dB [30.80, 31.70]"
    assert format_estimate(-1.2, -1.5, -0.9, signed=True) == "-1.200 [-1.500, -0.900]"


def test_imports_stay_light() -> None:
    import subprocess
    import sys

    code = ("import sys, diffquant.report, diffquant.quality, diffquant.commands.report, diffquant.commands.grid, "
            "diffquant.commands.score; "
            "print(sorted(m for m in ('torch', 'torchmetrics', 'matplotlib', 'jinja2', 'PIL', 'transformers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
