"""Sensitivity results in the results database: this module's own tables, created on first use
(like the quality module's), so the runs schema is untouched."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from diffquant.sensitivity.run import SensitivityResult

_DDL = (
    """CREATE TABLE IF NOT EXISTS sensitivity_run (
        id                 INTEGER PRIMARY KEY AUTOINCREMENT,
        model              TEXT NOT NULL,
        recipe             TEXT NOT NULL,
        denoiser           TEXT NOT NULL,
        granularity        TEXT NOT NULL,
        upgrade_type       TEXT,
        uniform_rel_error  REAL NOT NULL,
        context            TEXT NOT NULL DEFAULT 'alone',  -- alone | uniform (leave-one-out)
        settings           TEXT NOT NULL,   -- JSON: prompts, seed, steps, calls
        seconds            REAL NOT NULL,
        created_at         TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS sensitivity_group (
        run_id             INTEGER NOT NULL REFERENCES sensitivity_run (id) ON DELETE CASCADE,
        rank               INTEGER NOT NULL,  -- 1 = most sensitive
        group_name         TEXT NOT NULL,
        modules            TEXT NOT NULL,     -- JSON list
        rel_error          REAL NOT NULL,     -- context uniform: the error the group's promotion removes
        rel_error_upgrade  REAL NOT NULL,
        bytes_ref          INTEGER NOT NULL,
        bytes_quant        INTEGER NOT NULL,
        bytes_upgrade      INTEGER NOT NULL,
        psnr_db            REAL,
        PRIMARY KEY (run_id, rank)
    )""",
)


def save_result(db_path: Path, result: SensitivityResult) -> int:
    """Append one sweep; returns its id."""
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        for ddl in _DDL:
            conn.execute(ddl)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(sensitivity_run)")}
        if "context" not in columns:  # a database written before the column: its sweeps were "alone"
            conn.execute("ALTER TABLE sensitivity_run ADD COLUMN context TEXT NOT NULL DEFAULT 'alone'")
        cur = conn.execute(
            "INSERT INTO sensitivity_run (model, recipe, denoiser, granularity, upgrade_type, uniform_rel_error,"
            " context, settings, seconds, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (result.model, result.recipe, result.denoiser, result.granularity, result.upgrade,
             result.uniform_rel_error, result.context, json.dumps(result.settings, sort_keys=True), result.seconds,
             datetime.now(timezone.utc).isoformat(timespec="seconds")))
        run_id = int(cur.lastrowid or 0)
        conn.executemany(
            "INSERT INTO sensitivity_group VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(run_id, rank, g.name, json.dumps(list(g.modules)), g.rel_error, g.rel_error_upgrade, g.bytes_ref,
              g.bytes_quant, g.bytes_upgrade, g.psnr_db) for rank, g in enumerate(result.groups, start=1)])
    return run_id


def load_ranking(db_path: Path, run_id: int) -> list[tuple[str, float]]:
    """(group, relative error) in rank order for a stored sweep."""
    with sqlite3.connect(Path(db_path)) as conn:
        rows = conn.execute("SELECT group_name, rel_error FROM sensitivity_group WHERE run_id = ? ORDER BY rank",
                            (run_id,)).fetchall()
    return [(str(name), float(err)) for name, err in rows]
