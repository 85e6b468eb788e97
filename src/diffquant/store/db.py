"""The results database: SQLite (stdlib ``sqlite3``), one row per benchmark run plus its images.

Writing is all-or-nothing per run: :meth:`ResultsDB.record_run` inserts the run row and all its
image rows in one transaction (image files are written before, atomically, by the worker), so a
sweep that is interrupted at any moment leaves either a complete run or no trace of it.
No torch import here.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffquant.errors import DiffquantError
from diffquant.store.schema import MIGRATIONS, SCHEMA_VERSION

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Self

MetricValue = float | int | str | None


@dataclass(frozen=True)
class RunRow:
    """One benchmark run (a model × recipe × settings on one machine), finished or failed."""

    id: int
    sweep_id: str
    model: str
    recipe: str
    recipe_hash: str
    settings: dict[str, Any]
    status: str  # "ok" | "error"
    error: str | None
    metrics: dict[str, MetricValue]
    env: dict[str, Any]
    started_at: str
    finished_at: str
    run_key: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def metric(self, name: str, default: MetricValue = None) -> MetricValue:
        value = self.metrics.get(name)
        return default if value is None else value


@dataclass(frozen=True)
class ImageRow:
    """One generated image of a run; ``path`` is an absolute PNG path."""

    id: int
    run_id: int
    prompt: str
    prompt_index: int
    seed: int
    path: str
    latents_path: str | None = None


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _dumps(value: Any) -> str:
    return json.dumps(_clean(value), sort_keys=True, allow_nan=False, default=str)


_RUN_COLUMNS = ("id", "sweep_id", "model", "recipe", "recipe_hash", "settings", "status", "error", "metrics",
                "env", "started_at", "finished_at", "run_key")


def _run_from_sql(row: sqlite3.Row) -> RunRow:
    return RunRow(id=row["id"], sweep_id=row["sweep_id"], model=row["model"], recipe=row["recipe"],
                  recipe_hash=row["recipe_hash"], settings=json.loads(row["settings"]), status=row["status"],
                  error=row["error"], metrics=json.loads(row["metrics"]), env=json.loads(row["env"]),
                  started_at=row["started_at"], finished_at=row["finished_at"], run_key=row["run_key"])


@dataclass
class ResultsDB:
    """Open (creating and migrating as needed) a results database. Use as a context manager.

    ``connection`` is a plain ``sqlite3.Connection`` (foreign keys on, rows as ``sqlite3.Row``)
    so that other modules can keep their own tables in the same file.
    """

    path: Path
    connection: sqlite3.Connection = field(init=False, repr=False)

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser().resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.connection = sqlite3.connect(self.path, timeout=30.0)
        except sqlite3.Error as exc:
            raise DiffquantError(f"Cannot open results database {str(self.path)!r}: {exc}.",
                                 hint="give --db a writable file path") from exc
        self.connection.row_factory = sqlite3.Row
        self.connection.execute("PRAGMA foreign_keys = ON")
        try:
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self.connection.close()
            raise DiffquantError(f"{str(self.path)!r} is not a diffquant results database ({exc}).",
                                 hint="give --db a new file name or an existing results database") from exc

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self.connection.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        if self.schema_version == SCHEMA_VERSION:
            return
        conn = self.connection
        old_level = conn.isolation_level
        conn.isolation_level = None  # explicit transactions below
        try:
            conn.execute("BEGIN IMMEDIATE")  # one migrator at a time; re-read the version under the lock
            try:
                version = self.schema_version
                if version > SCHEMA_VERSION:
                    raise DiffquantError(
                        f"{str(self.path)!r} was written by a newer diffquant (schema {version}; this one "
                        f"reads up to {SCHEMA_VERSION}).", hint="upgrade diffquant")
                if version == 0 and conn.execute(
                        "SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone():
                    raise sqlite3.DatabaseError("has a 'runs' table but no diffquant schema version")
                for target, script in MIGRATIONS:
                    if target <= version:
                        continue
                    for statement in script.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {int(target)}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.isolation_level = old_level

    # -- reading ---------------------------------------------------------------------------
    def runs(self, model: str | None = None, status: str | None = None, *,
             sweep_id: str | None = None, recipe: str | None = None) -> list[RunRow]:
        """Runs in the order they were recorded, optionally filtered."""
        where, params = [], []
        for column, value in (("model", model), ("status", status), ("sweep_id", sweep_id),
                              ("recipe", recipe)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_run_from_sql(r) for r in self.connection.execute(sql + " ORDER BY id", params)]

    def run(self, run_id: int) -> RunRow | None:
        row = self.connection.execute(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE id = ?",
                                      (run_id,)).fetchone()
        return _run_from_sql(row) if row else None

    def run_by_key(self, run_key: str) -> RunRow | None:
        row = self.connection.execute(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE run_key = ?",
                                      (run_key,)).fetchone()
        return _run_from_sql(row) if row else None

    def images(self, run_id: int) -> list[ImageRow]:
        rows = self.connection.execute(
            "SELECT id, run_id, prompt, prompt_index, seed, path, latents_path FROM images "
            "WHERE run_id = ? ORDER BY prompt_index, seed", (run_id,))
        return [ImageRow(**dict(r)) for r in rows]

    def sweeps(self) -> list[str]:
        """Sweep ids in order of first appearance."""
        rows = self.connection.execute("SELECT sweep_id, MIN(id) AS first FROM runs GROUP BY sweep_id "
                                       "ORDER BY first")
        return [r["sweep_id"] for r in rows]

    def __iter__(self) -> Iterator[RunRow]:
        return iter(self.runs())

    # -- writing ---------------------------------------------------------------------------
    def record_run(self, run: RunRow, images: Sequence[ImageRow] = ()) -> int:
        """Insert a finished run and its images in one transaction; return the new run id.

        ``run.id`` and each image's ``id``/``run_id`` are ignored. A run with the same ``run_key``
        is replaced (its image rows go with it), inside the same transaction.
        """
        if run.status not in ("ok", "error"):
            raise ValueError(f"run status must be 'ok' or 'error', not {run.status!r}")
        if not run.run_key:
            raise ValueError("a run needs a run_key")
        with self.connection:  # BEGIN ... COMMIT, or ROLLBACK on any exception
            self.connection.execute("DELETE FROM runs WHERE run_key = ?", (run.run_key,))
            cursor = self.connection.execute(
                "INSERT INTO runs (run_key, sweep_id, model, recipe, recipe_hash, settings, status, error, "
                "metrics, env, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run.run_key, run.sweep_id, run.model, run.recipe, run.recipe_hash, _dumps(run.settings),
                 run.status, run.error, _dumps(run.metrics), _dumps(run.env), run.started_at,
                 run.finished_at))
            run_id = int(cursor.lastrowid or 0)
            self.connection.executemany(
                "INSERT INTO images (run_id, prompt, prompt_index, seed, path, latents_path) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(run_id, im.prompt, im.prompt_index, im.seed, str(im.path),
                  None if im.latents_path is None else str(im.latents_path)) for im in images])
        return run_id

    def delete_run(self, run_id: int) -> None:
        with self.connection:
            self.connection.execute("DELETE FROM runs WHERE id = ?", (run_id,))
