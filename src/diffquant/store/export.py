"""Exports of stored runs: CSV (one flat row per run, every metric a column), JSON (runs with
settings, metrics, environment and images, nested) and Markdown (the seed's table per sweep).
CSV and JSON carry each run's quality scores beside its measurements (per metric: mean and 95% CI
against the named reference run), the seed's table as the CLI shows it, the host's load and the
environment (commit, versions, machine).

Files are written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from diffquant.store.db import ResultsDB, RunRow
from diffquant.store.summary import counters_legend, first_line, summary_rows, table

FORMATS = ("csv", "json", "md")
_FIXED = ("id", "sweep_id", "model", "recipe", "recipe_hash", "status", "error", "started_at", "finished_at")


_QUALITY_FIELDS = ("status", "reference_recipe", "reference_run_id", "unit", "higher_is_better", "n", "mean",
                   "ci_low", "ci_high", "ci_level", "delta_mean", "delta_ci_low", "delta_ci_high", "reason")


def quality_scores(db: ResultsDB | None) -> dict[int, dict[str, dict[str, Any]]]:
    """``{run_id: {metric: {status, reference_recipe, mean, ci_low, ci_high, ...}}}`` from the
    quality tables (empty when the database was never scored)."""
    if db is None:
        return {}
    from diffquant.quality.store import read_quality

    return {run_id: {metric: {f: getattr(row, f) for f in _QUALITY_FIELDS} for metric, row in rows.items()}
            for run_id, rows in read_quality(db.connection).items()}


def _scalar(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def flat_row(run: RunRow, quality: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """A run as one flat dict: fixed columns, ``settings.*``, ``metrics`` under their names, then
    ``quality.<metric>.<field>`` and ``env.*`` (``env.packages.<name>``)."""
    row: dict[str, Any] = {key: getattr(run, key) for key in _FIXED}
    for key, value in sorted(run.settings.items()):
        row[f"settings.{key}"] = _scalar(value)
    row.update((k, _scalar(v)) for k, v in sorted(run.metrics.items()))
    for metric, fields in sorted((quality or {}).items()):
        row.update((f"quality.{metric}.{f}", v) for f, v in fields.items())
    for key, value in sorted(run.env.items()):
        if key == "packages" and isinstance(value, dict):
            row.update((f"env.packages.{name}", version) for name, version in sorted(value.items()))
        else:
            row[f"env.{key}"] = _scalar(value)
    return row


def to_csv(runs: Sequence[RunRow], db: ResultsDB | None = None) -> str:
    quality = quality_scores(db)
    rows = [flat_row(r, quality.get(r.id)) for r in runs]
    columns: list[str] = list(_FIXED)
    seen = set(columns)
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                columns.append(key)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def host_load(run: RunRow) -> dict[str, Any]:
    """The host's load during the run (``host.*`` counters, without the prefix)."""
    return {key.removeprefix("host."): value for key, value in sorted(run.metrics.items()) if key.startswith("host.")}


def to_json(db: ResultsDB, runs: Sequence[RunRow], reference: str = "bf16") -> str:
    """Every run with settings, metrics, environment, images, ``quality`` (per metric: mean and CI
    against ``reference_recipe``), ``summary`` (the seed's table's row: the model's own memory, the
    latency's IQR and its ratio's CI) and ``host`` (load average, contended)."""
    quality = quality_scores(db)
    summaries = {row["id"]: row for row in summary_rows(runs, reference)}
    payload = []
    for run in runs:
        item = {key: getattr(run, key) for key in (*_FIXED, "run_key", "settings", "metrics", "env")}
        item["quality"] = quality.get(run.id, {})
        item["summary"] = {k: v for k, v in summaries.get(run.id, {}).items()
                           if k not in ("id", "sweep_id", "model", "recipe", "status", "error")}
        item["host"] = host_load(run)
        item["images"] = [{"prompt": im.prompt, "prompt_index": im.prompt_index, "seed": im.seed,
                           "path": im.path, "latents_path": im.latents_path} for im in db.images(run.id)]
        payload.append(item)
    return json.dumps({"schema_version": db.schema_version, "reference": reference, "runs": payload},
                      indent=2, sort_keys=False, default=str)


def to_markdown(runs: Sequence[RunRow], reference: str = "bf16") -> str:
    """The seed's table, one section per sweep (same model, device and settings)."""
    out: list[str] = []
    sweeps: dict[str, list[RunRow]] = {}
    for run in runs:
        sweeps.setdefault(run.sweep_id, []).append(run)
    for sweep_id, members in sweeps.items():
        first = members[0]
        s = first.settings
        out.append(f"### {first.model} · {s.get('device', '?')} · {s.get('steps')} steps · "
                   f"{s.get('width')}x{s.get('height')} · sweep {sweep_id}")
        out.append("")
        headers, cells = table(summary_rows(members, reference))
        out.append("| " + " | ".join(headers) + " |")
        out.append("|" + "|".join("---" for _ in headers) + "|")
        for line in cells:
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |")
        out.append("")
        out.append(f"(n×): ratio to `{reference}` in the same sweep. Counters: "
                   + "; ".join(counters_legend([str(m.settings.get("device", "cpu")) for m in members])) + ".")
        out.append("")
        errors = [m for m in members if not m.ok]
        for m in errors:
            out.append(f"- `{m.recipe}`: {first_line(m.error or '', 400)}")
        if errors:
            out.append("")
    return "\n".join(out) if out else "_No runs._\n"


def render(db: ResultsDB, runs: Sequence[RunRow], fmt: str, reference: str = "bf16") -> str:
    if fmt == "csv":
        return to_csv(runs, db)
    if fmt == "json":
        return to_json(db, runs, reference)
    if fmt == "md":
        return to_markdown(runs, reference)
    raise ValueError(f"unknown export format {fmt!r}; choose from {FORMATS}")
