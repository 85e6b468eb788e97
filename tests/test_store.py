"""The results database: schema and migrations, all-or-nothing writes, queries and exports.
No torch, no worker: fast."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from diffquant.errors import DiffquantError
from diffquant.store import SCHEMA_VERSION, ImageRow, ResultsDB, RunRow, render, summary_rows, write_atomic

SETTINGS = {"steps": 2, "height": 64, "width": 64, "guidance_scale": 3.5, "prompts": ["a"], "seeds": [0],
            "device": "cpu"}


def make_run(recipe: str = "bf16", key: str | None = None, status: str = "ok", sweep: str = "s1",
             **metrics: float) -> RunRow:
    base = {"load.rss_mib": 100.0, "gen.peak_rss_mib": 150.0, "call.latency_s.p50": 1.0,
            "weights.total_bytes": 1024 * 1024 * 10, "load.peak_rss_mib": 120.0, "compile.time_s": None}
    base.update(metrics)
    return RunRow(id=0, sweep_id=sweep, model="zoo:tiny-flux", recipe=recipe, recipe_hash=f"h-{recipe}",
                  settings=SETTINGS, status=status, error=None if status == "ok" else "boom\nmore",
                  metrics=base if status == "ok" else {}, env={"cpu_model": "x"},
                  started_at="2026-01-01T00:00:00Z", finished_at="2026-01-01T00:00:01Z",
                  run_key=key or f"k-{recipe}-{sweep}")


def images(n: int = 2) -> list[ImageRow]:
    return [ImageRow(0, 0, f"prompt {i}", i, 0, f"/tmp/img{i}.png", f"/tmp/img{i}.latents.safetensors")
            for i in range(n)]


def test_create_record_and_read_back(tmp_path: Path) -> None:
    with ResultsDB(tmp_path / "sub" / "r.db") as db:
        assert db.schema_version == SCHEMA_VERSION
        run_id = db.record_run(make_run(), images())
        runs = db.runs()
        assert [r.id for r in runs] == [run_id]
        run = runs[0]
        assert run.settings == SETTINGS and run.ok and run.metric("load.rss_mib") == 100.0
        assert run.metrics["compile.time_s"] is None
        ims = db.images(run_id)
        assert [(i.prompt_index, i.seed, i.run_id) for i in ims] == [(0, 0, run_id), (1, 0, run_id)]
        assert ims[0].latents_path.endswith(".safetensors")
        assert db.run_by_key(run.run_key) == run == db.run(run_id)
        assert isinstance(db.connection, sqlite3.Connection)
    with ResultsDB(tmp_path / "sub" / "r.db") as db:  # reopen: no migration, same data
        assert len(db.runs()) == 1 and db.runs(status="error") == [] and db.runs(model="other") == []


def test_non_finite_metrics_become_null(tmp_path: Path) -> None:
    with ResultsDB(tmp_path / "r.db") as db:
        db.record_run(make_run(**{"x.nan": float("nan"), "x.inf": float("inf")}))
        assert db.runs()[0].metrics["x.nan"] is None and db.runs()[0].metrics["x.inf"] is None


def test_same_run_key_replaces_run_and_its_images(tmp_path: Path) -> None:
    with ResultsDB(tmp_path / "r.db") as db:
        first = db.record_run(make_run(), images(2))
        second = db.record_run(make_run(**{"load.rss_mib": 5.0}), images(1))
        assert first != second
        assert len(db.runs()) == 1 and db.runs()[0].metric("load.rss_mib") == 5.0
        assert db.images(first) == [] and len(db.images(second)) == 1
        count = db.connection.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        assert count == 1


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with ResultsDB(tmp_path / "r.db") as db:
        db.record_run(make_run("bf16"), images(1))
        bad = images(1) * 2  # the same (prompt_index, seed) twice violates UNIQUE mid-transaction
        with pytest.raises(sqlite3.IntegrityError):
            db.record_run(make_run("int8"), bad)
        assert [r.recipe for r in db.runs()] == ["bf16"]
        assert db.connection.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 1
        # A failed replacement keeps the old run intact.
        with pytest.raises(sqlite3.IntegrityError):
            db.record_run(make_run("bf16", **{"load.rss_mib": 1.0}), bad)
        assert db.runs()[0].metric("load.rss_mib") == 100.0 and len(db.images(db.runs()[0].id)) == 1


def test_other_modules_can_keep_tables_with_cascade(tmp_path: Path) -> None:
    with ResultsDB(tmp_path / "r.db") as db:
        run_id = db.record_run(make_run())
        db.connection.execute("CREATE TABLE quality_x (run_id INTEGER REFERENCES runs (id) ON DELETE CASCADE, v REAL)")
        db.connection.execute("INSERT INTO quality_x VALUES (?, 1.0)", (run_id,))
        db.connection.commit()
        db.record_run(make_run())  # re-run replaces: the old run's quality rows go with it
        assert db.connection.execute("SELECT COUNT(*) FROM quality_x").fetchone()[0] == 0


def test_migration_guards(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(DiffquantError, match="newer diffquant"):
        ResultsDB(newer)
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE runs (x)")
    conn.commit()
    conn.close()
    with pytest.raises(DiffquantError, match="not a diffquant results database"):
        ResultsDB(foreign)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DiffquantError):
        ResultsDB(garbage)


def test_summary_ratios_are_per_sweep(tmp_path: Path) -> None:
    runs = [make_run("bf16"), make_run("int8", **{"load.rss_mib": 50.0, "weights.total_bytes": 5 * 1024 * 1024}),
            make_run("bf16", sweep="s2", **{"load.rss_mib": 1000.0}), make_run("int8", sweep="s2"),
            make_run("broken", status="error")]
    rows = summary_rows(runs, reference="bf16")
    assert rows[1]["after_load_mib.ratio"] == pytest.approx(0.5)
    assert rows[1]["weights_mib.ratio"] == pytest.approx(0.5) and rows[1]["weights_mib"] == pytest.approx(5.0)
    assert rows[3]["after_load_mib.ratio"] == pytest.approx(0.1)  # against s2's bf16, not s1's
    assert rows[4]["status"] == "error" and rows[4]["error"] == "boom" and rows[4]["after_load_mib"] is None


def test_exports_parse(tmp_path: Path) -> None:
    with ResultsDB(tmp_path / "r.db") as db:
        db.record_run(make_run("bf16"), images(2))
        db.record_run(make_run("bnb-nf4(skip=a|b)", **{"extra.only_here": 3}))
        db.record_run(make_run("bad", status="error"))
        runs = db.runs()
        rows = list(csv.DictReader(io.StringIO(render(db, runs, "csv"))))
        assert [r["recipe"] for r in rows] == ["bf16", "bnb-nf4(skip=a|b)", "bad"]
        assert rows[1]["extra.only_here"] == "3" and rows[0]["extra.only_here"] == ""
        assert json.loads(rows[0]["settings.prompts"]) == ["a"]
        payload = json.loads(render(db, runs, "json"))
        assert payload["schema_version"] == SCHEMA_VERSION
        assert len(payload["runs"][0]["images"]) == 2 and payload["runs"][2]["status"] == "error"
        md = render(db, runs, "md")
        table_lines = [ln for ln in md.splitlines() if ln.startswith("|")]
        assert len(table_lines) == 2 + 3
        unescaped = [ln.replace("\\|", "") for ln in table_lines]
        assert len({ln.count("|") for ln in unescaped}) == 1  # the '|' inside a recipe is escaped
        assert "(0.50×)" not in md and "(1.00×)" in md and "`bad`: boom" in md
    out = tmp_path / "out" / "r.csv"
    write_atomic(out, "a,b\n")
    assert out.read_text() == "a,b\n" and not list(out.parent.glob(".r.csv.*"))
    assert out.stat().st_mode & 0o044  # readable by others, not mkstemp's 0600


def test_store_does_not_import_torch() -> None:
    code = "import sys, diffquant.store, diffquant.store.export; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
