"""Latency a user can trust: steady calls until there are enough, p50 with its IQR, the ratio to
the reference with a bootstrap CI ("≈" when it holds 1.0), the contended flag from the host's
load average; and the exports/tables that carry them (quality beside measurements, no wrapping
when piped)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from diffquant.bench.measure import Sampler, latency_stats
from diffquant.bench.phases import CONTENDED_MARGIN, contention_counters, steady_plan
from diffquant.quality.bootstrap import bootstrap_ratio
from diffquant.store import ResultsDB, RunRow, render, summary_rows
from diffquant.store.summary import fmt_ratio_ci, table

SETTINGS = {"prompts": ["a"], "seeds": [0], "steps": 2, "height": 64, "width": 64, "device": "cpu"}
FAST = [1.00, 1.02, 0.98, 1.01, 0.99, 1.03, 0.97, 1.00]
SLOW = [v * 1.5 for v in FAST]


def run_row(recipe: str, samples: list[float], run_id: int = 0, **metrics: Any) -> RunRow:
    stats = latency_stats("call.latency_s", samples, keep_samples=True)
    base = {"load.model_rss_mib": 20.0, "load.rss_mib": 450.0, "gen.model_peak_rss_mib": 90.0,
            "gen.peak_rss_mib": 520.0, "weights.total_bytes": 10 * 2**20, **stats, **metrics}
    return RunRow(id=run_id, sweep_id="s", model="zoo:tiny-flux", recipe=recipe, recipe_hash=f"h{recipe}",
                  settings=SETTINGS, status="ok", error=None, metrics=base,
                  env={"git_commit": "abc123", "packages": {"torch": "2.13.0"}},
                  started_at="2026-01-01T00:00:00Z", finished_at="2026-01-01T00:00:01Z", run_key=f"k{recipe}")


# -- steady calls -----------------------------------------------------------------------------------
def test_steady_plan_count_based_and_time_based() -> None:
    pairs = ["p0", "p1", "p2"]
    plan = list(steady_plan(pairs, repeats=5, min_time_s=0.0, elapsed=lambda: 0.0))
    assert plan == [("p1", True), ("p2", True)] + [("p0", False)] * 3
    assert len(list(steady_plan(pairs, repeats=1, min_time_s=0.0, elapsed=lambda: 0.0))) == 2
    clock = iter(range(100))
    timed = list(steady_plan(pairs, repeats=2, min_time_s=10.0, elapsed=lambda: next(clock)))
    assert len(timed) > 2 and timed[-1] == ("p0", False)  # went on until 10 "seconds" had passed


def test_latency_stats_keep_the_iqr_and_samples() -> None:
    stats = latency_stats("call.latency_s", [1.0, 2.0, 3.0, 4.0, 5.0], keep_samples=True)
    assert stats["call.latency_s.p50"] == 3.0 and stats["call.latency_s.p25"] == 2.0
    assert stats["call.latency_s.p75"] == 4.0 and stats["call.latency_s.samples"] == [1.0, 2.0, 3.0, 4.0, 5.0]


# -- ratio CI ------------------------------------------------------------------------------------------
def test_bootstrap_ratio_separates_a_real_difference_from_noise() -> None:
    slower = bootstrap_ratio(SLOW, FAST)
    assert slower is not None and slower.mean == pytest.approx(1.5, rel=0.02) and slower.ci_low > 1.2
    same = bootstrap_ratio(list(reversed(FAST)), FAST)
    assert same is not None and same.contains(1.0)
    assert bootstrap_ratio([], FAST) is None and bootstrap_ratio(FAST, [0.0]) is None


def test_ratio_ci_formatting() -> None:
    assert fmt_ratio_ci(1.34, 1.30, 1.38) == "1.34× [1.30, 1.38]"
    assert fmt_ratio_ci(1.01, 0.97, 1.05) == "≈1.01× [0.97, 1.05]"
    assert fmt_ratio_ci(0.8, None, None) == "0.80×" and fmt_ratio_ci(None, 0.1, 0.2) == "-"


def test_summary_rows_carry_the_latency_ci_and_the_table_shows_it() -> None:
    rows = summary_rows([run_row("bf16", FAST), run_row("slow", SLOW, 1), run_row("same", FAST[::-1], 2)])
    assert rows[0]["inference_s.ratio_low"] is None  # the reference against itself: no interval
    assert rows[1]["inference_s.ratio_low"] > 1.2 and rows[1]["inference_s.ratio_high"] < 1.8
    assert rows[2]["inference_s.ratio_low"] <= 1.0 <= rows[2]["inference_s.ratio_high"]
    _, cells = table(rows)
    assert "≈" not in cells[1][4] and "× [" in cells[1][4] and "n=8" in cells[1][4]
    assert "(≈1.00× [" in cells[2][4]
    assert "[0.99 s–1.02 s]" in cells[0][4] or "[990 ms" in cells[0][4] or "–" in cells[0][4]  # the IQR
    assert "proc 520.0 MiB" in cells[1][3] and cells[1][3].startswith("90.0 MiB")  # the model's own, process beside


# -- contended ------------------------------------------------------------------------------------------
def test_contended_rule() -> None:
    # 2 cores, the run's own 2 threads: a load of 2 is the run itself; 3 means another busy process
    assert contention_counters(2.0 + CONTENDED_MARGIN / 2, 2, 2)["host.contended"] == 0
    busy = contention_counters(3.2, 2, 2)
    assert busy["host.contended"] == 1 and busy["host.load_others.max"] == pytest.approx(1.2)
    assert contention_counters(3.2, 1, 8)["host.contended"] == 0  # 8 cores: room for the others
    assert contention_counters(None, 2, 2)["host.contended"] is None


def test_sampler_records_the_highest_load_average(monkeypatch: pytest.MonkeyPatch) -> None:
    loads = iter([0.5, 4.0] + [1.0] * 10_000)
    monkeypatch.setattr(os, "getloadavg", lambda: (next(loads), 0.0, 0.0))
    with Sampler(interval_s=0.001) as sampler:
        sampler.phase("generate")
    assert max(p.loadavg_1m or 0 for p in sampler.peaks.values()) == 4.0


def test_contended_runs_are_flagged_in_every_table(tmp_path: Path) -> None:
    runs = [run_row("bf16", FAST), run_row("busy", FAST, 1, **{"host.contended": 1})]
    rows = summary_rows(runs)
    assert rows[1]["contended"] and not rows[0]["contended"]
    _, cells = table(rows)
    assert cells[1][1] == "ok · contended" and cells[0][1] == "ok"
    with ResultsDB(tmp_path / "r.db") as db:
        for run in runs:
            db.record_run(run, [])
        stored = db.runs()
        assert "ok · contended" in render(db, stored, "md")
        assert json.loads(render(db, stored, "json"))["runs"][1]["host"]["contended"] == 1


# -- exports and piped tables -------------------------------------------------------------------------
def _scored_db(tmp_path: Path) -> Path:
    from diffquant.quality.bootstrap import Estimate
    from diffquant.quality.scoring import BootstrapSettings, MetricResult
    from diffquant.quality.store import write_results

    path = tmp_path / "r.db"
    with ResultsDB(path) as db:
        db.record_run(run_row("bf16", FAST), [])
        db.record_run(run_row("bnb-nf4", SLOW), [])
        ids = [r.id for r in db.runs()]
        write_results(db.connection, [
            MetricResult(ids[0], "psnr", "reference", reference_run_id=ids[0]),
            MetricResult(ids[1], "psnr", "ok", reference_run_id=ids[0], estimate=Estimate(4, 31.2, 30.8, 31.6))],
            "bf16", BootstrapSettings())
    return path


def test_results_json_and_csv_carry_quality_and_environment(tmp_path: Path) -> None:
    path = _scored_db(tmp_path)
    with ResultsDB(path) as db:
        runs = db.runs()
        payload = json.loads(render(db, runs, "json"))
        psnr = payload["runs"][1]["quality"]["psnr"]
        assert psnr["mean"] == 31.2 and psnr["ci_low"] == 30.8 and psnr["ci_high"] == 31.6
        assert psnr["reference_recipe"] == "bf16" and psnr["status"] == "ok"
        assert payload["runs"][0]["quality"]["psnr"]["status"] == "reference"
        assert payload["runs"][1]["summary"]["inference_s.ratio_low"] > 1.2
        assert payload["runs"][1]["env"]["git_commit"] == "abc123"
        rows = list(csv.DictReader(io.StringIO(render(db, runs, "csv"))))
        assert rows[1]["quality.psnr.mean"] == "31.2" and rows[1]["quality.psnr.ci_high"] == "31.6"
        assert rows[1]["env.git_commit"] == "abc123" and rows[1]["env.packages.torch"] == "2.13.0"
        assert json.loads(rows[1]["call.latency_s.samples"])[0] == pytest.approx(1.5)


def test_piped_results_table_keeps_its_columns(tmp_path: Path) -> None:
    path = _scored_db(tmp_path)
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    env.pop("FORCE_COLOR", None)
    out = subprocess.run([sys.executable, "-m", "diffquant.cli", "results", "--db", str(path)],
                         capture_output=True, text=True, env=env, check=True).stdout
    rows = [ln for ln in out.splitlines() if "bnb-nf4" in ln and "│" in ln]
    assert len(rows) == 1, out  # one line per run: nothing wrapped onto a second line
    assert len(rows[0]) > 80 and "× [" in rows[0]


def test_report_shows_the_model_memory_the_latency_ci_and_the_contended_flag(tmp_path: Path) -> None:
    from diffquant.report import write_report

    path = tmp_path / "r.db"
    with ResultsDB(path) as db:
        db.record_run(run_row("bf16", FAST), [])
        db.record_run(run_row("bnb-nf4", SLOW, **{"host.contended": 1}), [])
    html = write_report(path, tmp_path / "report.html").read_text(encoding="utf-8")
    figures = html[html.index("-figures"):html.index("</table>", html.index("-figures"))]
    assert "gen.model_peak_rss_mib" in figures and "process 520.0 MiB" in figures
    assert "×" in figures and "× [" in figures  # the latency ratio with its CI
    assert "badge contended" in figures and "<b>Contended:</b> bnb-nf4" in html
