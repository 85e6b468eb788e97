"""The thin database layer: runs in (through :class:`diffquant.store.ResultsDB`), scores out into
this module's own tables ``quality_run`` and ``quality_image`` in the same SQLite file.

The tables are created with ``CREATE TABLE IF NOT EXISTS``; ``quality_meta`` holds their schema
version (row ``schema_version``). Rows cascade away with their run when the store replaces or
deletes it. ``inf`` (PSNR of identical images) is stored as SQLite's Inf; NaN as NULL.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffquant.errors import DiffquantError
from diffquant.quality.data import ImageInfo, RunInfo

if TYPE_CHECKING:  # pragma: no cover
    from diffquant.quality.scoring import BootstrapSettings, MetricResult
    from diffquant.store.db import ResultsDB

QUALITY_SCHEMA_VERSION = 1

_DDL = (
    """CREATE TABLE IF NOT EXISTS quality_meta (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS quality_run (
        run_id            INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        metric            TEXT NOT NULL,
        status            TEXT NOT NULL CHECK (status IN ('ok', 'reference', 'unavailable', 'error')),
        reason            TEXT,            -- why unavailable / error, or how the metric adapted
        reference_recipe  TEXT NOT NULL,   -- the recipe asked for as reference
        reference_run_id  INTEGER,         -- the run actually compared against
        higher_is_better  INTEGER NOT NULL,
        needs_reference   INTEGER NOT NULL,
        unit              TEXT NOT NULL,
        n                 INTEGER,         -- images in the mean
        mean              REAL,
        ci_low            REAL,
        ci_high           REAL,
        delta_mean        REAL,            -- metrics without reference: mean(run - reference), paired
        delta_ci_low      REAL,
        delta_ci_high     REAL,
        ci_level          REAL,
        resamples         INTEGER,
        bootstrap_seed    INTEGER,
        scored_at         TEXT NOT NULL,
        PRIMARY KEY (run_id, metric)
    )""",
    """CREATE TABLE IF NOT EXISTS quality_image (
        image_id            INTEGER NOT NULL REFERENCES images (id) ON DELETE CASCADE,
        run_id              INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        metric              TEXT NOT NULL,
        reference_image_id  INTEGER,
        value               REAL,
        PRIMARY KEY (image_id, metric)
    )""",
    "CREATE INDEX IF NOT EXISTS quality_image_run ON quality_image (run_id, metric)",
)


@dataclass(frozen=True)
class QualityRow:
    """One stored ``quality_run`` row."""

    run_id: int
    metric: str
    status: str
    reason: str | None
    reference_recipe: str
    reference_run_id: int | None
    higher_is_better: bool
    needs_reference: bool
    unit: str
    n: int | None
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    delta_mean: float | None
    delta_ci_low: float | None
    delta_ci_high: float | None
    ci_level: float | None
    scored_at: str


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the quality tables if needed; refuse a file written by a newer diffquant."""
    with conn:
        for statement in _DDL:
            conn.execute(statement)
        row = conn.execute("SELECT value FROM quality_meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO quality_meta (key, value) VALUES ('schema_version', ?)",
                         (str(QUALITY_SCHEMA_VERSION),))
        elif int(row[0]) > QUALITY_SCHEMA_VERSION:
            raise DiffquantError(f"The quality tables were written by a newer diffquant (schema {row[0]}; "
                                 f"this one reads up to {QUALITY_SCHEMA_VERSION}).", hint="upgrade diffquant")


def has_quality_tables(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'quality_run'"
                        ).fetchone() is not None


def _path(value: str | None, base: Path) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    return path if path.is_absolute() else base / path


def load_runs(db: ResultsDB) -> list[RunInfo]:
    """Every run of the database with its images, as plain :class:`RunInfo`."""
    base = Path(db.path).parent
    runs = []
    for row in db.runs():
        images = tuple(ImageInfo(id=im.id, run_id=im.run_id, prompt=im.prompt, prompt_index=im.prompt_index,
                                 seed=im.seed, path=_path(im.path, base) or Path(im.path),
                                 latents_path=_path(im.latents_path, base))
                       for im in db.images(row.id))
        runs.append(RunInfo(id=row.id, model=row.model, recipe=row.recipe, settings=dict(row.settings),
                            status=row.status, error=row.error, metrics=dict(row.metrics), env=dict(row.env),
                            images=images, sweep_id=row.sweep_id, recipe_hash=row.recipe_hash,
                            started_at=row.started_at, finished_at=row.finished_at))
    return runs


def open_existing(db_path: Path) -> ResultsDB:
    """Open a results database that must already exist (never create an empty one by mistake)."""
    from diffquant.store.db import ResultsDB

    path = Path(db_path).expanduser()
    if not path.is_file():
        raise DiffquantError(f"No results database at {str(path)!r}.",
                             hint="run `diffquant bench ... --db FILE` first, or give the right --db path")
    return ResultsDB(path)


def _num(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)  # NaN -> NULL


def write_results(conn: sqlite3.Connection, results: list[MetricResult], reference: str,
                  boot: BootstrapSettings) -> None:
    """Replace the stored scores of every (run, metric) in ``results``, in one transaction."""
    from diffquant.quality.registry import METRICS

    ensure_schema(conn)
    scored_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with conn:
        for res in results:
            info = METRICS.get(res.metric)
            conn.execute("DELETE FROM quality_run WHERE run_id = ? AND metric = ?", (res.run_id, res.metric))
            conn.execute("DELETE FROM quality_image WHERE run_id = ? AND metric = ?", (res.run_id, res.metric))
            est, delta = res.estimate, res.delta
            conn.execute(
                "INSERT INTO quality_run (run_id, metric, status, reason, reference_recipe, reference_run_id, "
                "higher_is_better, needs_reference, unit, n, mean, ci_low, ci_high, delta_mean, delta_ci_low, "
                "delta_ci_high, ci_level, resamples, bootstrap_seed, scored_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (res.run_id, res.metric, res.status, res.reason, reference, res.reference_run_id,
                 int(info.higher_is_better), int(info.needs_reference), info.unit,
                 est.n if est else None, _num(est.mean) if est else None, _num(est.ci_low) if est else None,
                 _num(est.ci_high) if est else None, _num(delta.mean) if delta else None,
                 _num(delta.ci_low) if delta else None, _num(delta.ci_high) if delta else None,
                 boot.level, boot.resamples, boot.seed, scored_at))
            conn.executemany(
                "INSERT INTO quality_image (image_id, run_id, metric, reference_image_id, value) "
                "VALUES (?, ?, ?, ?, ?)",
                [(s.image_id, res.run_id, res.metric, s.reference_image_id, _num(s.value)) for s in res.images])


def current_scores(conn: sqlite3.Connection, reference: str,
                   boot: BootstrapSettings) -> Callable[[Any, str, Any], bool]:
    """A ``keep(run_id, metric, reference_run_id)`` predicate: True where the stored score was made
    against that same reference run and recipe, with the same bootstrap settings, and succeeded."""
    stored: dict[tuple[Any, str], tuple[Any, ...]] = {}
    if has_quality_tables(conn):
        for row in conn.execute("SELECT run_id, metric, status, reference_recipe, reference_run_id, ci_level, "
                                "resamples, bootstrap_seed FROM quality_run"):
            stored[(row[0], row[1])] = tuple(row[2:])

    def keep(run_id: Any, metric: str, reference_run_id: Any) -> bool:
        got = stored.get((run_id, metric))
        if got is None or got[0] not in ("ok", "reference"):
            return False
        return got[1:] == (reference, reference_run_id, boot.level, boot.resamples, boot.seed)

    return keep


def read_quality(conn: sqlite3.Connection) -> dict[int, dict[str, QualityRow]]:
    """Stored run-level scores as ``{run_id: {metric: QualityRow}}`` (empty if never scored)."""
    if not has_quality_tables(conn):
        return {}
    out: dict[int, dict[str, QualityRow]] = {}
    cols = ", ".join(QualityRow.__dataclass_fields__)
    for row in conn.execute(f"SELECT {cols} FROM quality_run ORDER BY run_id, rowid"):
        data: dict[str, Any] = dict(zip(QualityRow.__dataclass_fields__, tuple(row)))
        data["higher_is_better"] = bool(data["higher_is_better"])
        data["needs_reference"] = bool(data["needs_reference"])
        out.setdefault(data["run_id"], {})[data["metric"]] = QualityRow(**data)
    return out


def read_image_quality(conn: sqlite3.Connection) -> dict[int, dict[str, float | None]]:
    """Stored per-image scores as ``{image_id: {metric: value}}``."""
    if not has_quality_tables(conn):
        return {}
    out: dict[int, dict[str, float | None]] = {}
    for image_id, metric, value in conn.execute("SELECT image_id, metric, value FROM quality_image"):
        out.setdefault(image_id, {})[metric] = value
    return out
