"""Everything a report shows, read once from the results database into plain objects.

One :class:`SweepView` per sweep (same model, device and settings: the runs whose numbers may be
compared), with its reference run first. The seed's table comes from the store's own
:func:`diffquant.store.summary_rows`, so the CLI table, the exports and this report agree on which
counter fills which column. No torch import here.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffquant.figures import (
    counter_label,
    counter_unit,
    fmt_memory,
    fmt_ratio_ci,
    fmt_seconds,
    format_estimate,
    memory_unit,
    report_ratio,
)
from diffquant.quality.data import ImageInfo, RunInfo, canonical_recipe, settings_label
from diffquant.quality.registry import METRICS, MetricInfo
from diffquant.quality.store import QualityRow, load_runs, open_existing, read_image_quality, read_quality

# The seed's columns (keys of diffquant.store.summary.COLUMNS) in the order the report shows them.
TABLE_KEYS = ("after_load_mib", "peak_mib", "inference_s", "compile_s", "weights_mib")
# Which quality metric leads the plots and the grid labels, first available wins.
PRIMARY_METRICS = ("psnr", "ssim", "lpips", "ms-ssim", "latent-rel-error", "shapes-adherence", "clip-score")


@dataclass
class Column:
    key: str
    title: str
    counter: str | None  # the stored counter name, e.g. "gen.peak_rss_mib"
    label: str  # e.g. "peak RSS"
    unit: str  # display unit: "GiB" | "MiB" | "s"
    kind: str  # "mib" | "s"
    process_counter: str | None = None  # CPU memory: the whole process's figure, shown beside

    @property
    def heading(self) -> str:
        return f"{self.label}, {self.unit}" if self.label else self.unit


@dataclass
class Cell:
    value: float | None  # in the stored unit (MiB or s)
    text: str
    ratio: float | None = None
    ratio_text: str = ""
    extra: str = ""  # beside the value: the whole process's memory, or the latency's IQR and n


@dataclass
class RunView:
    run: RunInfo
    is_reference: bool
    anchor: str
    cells: dict[str, Cell] = field(default_factory=dict)
    quality: dict[str, QualityRow] = field(default_factory=dict)
    image_quality: dict[Any, dict[str, float | None]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)  # the run's row of the seed's table
    contended: bool = False  # the host was busy with other work during the run: times unreliable

    @property
    def recipe(self) -> str:
        return self.run.recipe

    def score(self, metric: str) -> QualityRow | None:
        row = self.quality.get(metric)
        return row if row is not None and row.status == "ok" else None

    def quality_text(self, metric: str) -> str:
        row = self.quality.get(metric)
        if row is None:
            return "not scored"
        if row.status == "reference":
            return "reference"
        if row.status != "ok":
            return row.status
        text = format_estimate(row.mean, row.ci_low, row.ci_high, row.unit)
        if row.delta_mean is not None:
            text += " (Δ " + format_estimate(row.delta_mean, row.delta_ci_low, row.delta_ci_high, row.unit,
                                            signed=True) + ")"
        return text

    def images_sorted(self) -> list[ImageInfo]:
        return sorted(self.run.images, key=lambda i: i.key)


@dataclass
class SweepView:
    sweep_id: str
    model: str
    device: str
    settings: dict[str, Any]
    anchor: str
    runs: list[RunView] = field(default_factory=list)  # successful runs, reference first
    failed: list[RunInfo] = field(default_factory=list)
    columns: list[Column] = field(default_factory=list)
    metrics: list[MetricInfo] = field(default_factory=list)  # metrics with at least one value here
    unavailable: dict[str, list[str]] = field(default_factory=dict)  # metric -> distinct reasons
    notes: dict[str, list[str]] = field(default_factory=dict)  # metric -> how it adapted

    @property
    def label(self) -> str:
        return f"{self.model} · {self.device} · {settings_label(self.settings)}"

    @property
    def contended(self) -> list[str]:
        return [r.recipe for r in self.runs if r.contended]

    @property
    def reference(self) -> RunView | None:
        return next((r for r in self.runs if r.is_reference), None)

    @property
    def primary_metric(self) -> MetricInfo | None:
        names = [m.name for m in self.metrics]
        for name in PRIMARY_METRICS:
            if name in names:
                return METRICS.get(name)
        return self.metrics[0] if self.metrics else None

    def column(self, key: str) -> Column | None:
        return next((c for c in self.columns if c.key == key), None)


@dataclass
class ReportData:
    db_path: Path
    reference: str
    sweeps: list[SweepView]
    environments: list[tuple[str, dict[str, Any]]]  # (run label, its recorded environment)
    metric_infos: list[MetricInfo]
    scored: bool  # whether the quality tables exist

    @property
    def run_count(self) -> int:
        return sum(len(s.runs) + len(s.failed) for s in self.sweeps)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "x"


def _stored_reference(quality: dict[int, dict[str, QualityRow]]) -> str | None:
    counts: dict[str, int] = {}
    for rows in quality.values():
        for row in rows.values():
            counts[row.reference_recipe] = counts.get(row.reference_recipe, 0) + 1
    return max(counts, key=lambda k: counts[k]) if counts else None


def collect(db_path: Path, reference: str | None = None) -> ReportData:
    """Read runs, the seed's table, quality scores and environments from ``db_path``."""
    from diffquant.store import COLUMNS, summary_rows
    from diffquant.store.summary import run_device

    with open_existing(Path(db_path)) as db:
        rows = db.runs()
        runs = {r.id: r for r in load_runs(db)}
        quality = read_quality(db.connection)
        image_quality = read_image_quality(db.connection)
        scored = bool(quality)
        ref_recipe = canonical_recipe(reference or _stored_reference(quality) or "bf16")
        summary = {row["id"]: row for row in summary_rows(rows, ref_recipe)}
        db_file = Path(db.path)

    store_columns = {c.key: c for c in COLUMNS}
    sweeps: OrderedDict[str, SweepView] = OrderedDict()
    for row in rows:
        run = runs[row.id]
        sweep = sweeps.get(row.sweep_id)
        if sweep is None:
            device = run_device(row)
            sweep = SweepView(sweep_id=row.sweep_id, model=row.model, device=device, settings=dict(row.settings),
                              anchor=f"sweep-{slug(row.sweep_id)}")
            sweeps[row.sweep_id] = sweep
        if not run.ok:
            sweep.failed.append(run)
            continue
        summ = summary.get(run.id, {})
        is_ref = bool(summ.get("is_reference"))  # the one rule (store.reference)
        view = RunView(run=run, is_reference=is_ref, anchor=f"run-{run.id}-{slug(run.recipe)}",
                       quality=quality.get(run.id, {}),
                       image_quality={im.id: image_quality.get(im.id, {}) for im in run.images})
        view.contended = bool(summ.get("contended"))
        view.summary = summ
        for key in TABLE_KEYS:
            view.cells[key] = Cell(value=summ.get(key), text="", ratio=summ.get(f"{key}.ratio"))
        sweep.runs.append(view)

    for sweep in sweeps.values():
        refs = [r for r in sweep.runs if r.is_reference]
        for extra in refs[:-1]:  # several reference runs: the latest is the reference
            extra.is_reference = False
        sweep.runs.sort(key=lambda r: (not r.is_reference, r.run.id))
        _fill_columns(sweep, store_columns)
        _fill_metrics(sweep)

    environments = [(f"{run.recipe} (#{run.id})", run.env) for run in runs.values() if run.env]
    used = {m for rows_ in quality.values() for m in rows_}
    infos = [m for m in METRICS if m.name in used]
    return ReportData(db_path=db_file, reference=ref_recipe, sweeps=list(sweeps.values()),
                      environments=environments, metric_infos=infos, scored=scored)


def _fill_columns(sweep: SweepView, store_columns: dict[str, Any]) -> None:

    for key in TABLE_KEYS:
        spec = store_columns.get(key)
        if spec is None:
            continue
        counter = spec.counter(sweep.device)
        process = spec.process_counter(sweep.device)
        if process and all(r.summary.get(f"{key}.fallback") for r in sweep.runs):
            counter, process = process, None  # runs recorded before the model's own counters
        values = [r.cells[key].value for r in sweep.runs]
        if spec.kind == "mib":
            unit = memory_unit(values)
        else:
            unit = counter_unit(counter) if counter else "s"
        label = counter_label(counter) if counter else ""
        sweep.columns.append(Column(key, spec.title, counter, label, unit, spec.kind, process))
        for run in sweep.runs:
            cell, summ = run.cells[key], run.summary
            cell.text = fmt_memory(cell.value, unit) if spec.kind == "mib" else fmt_seconds(cell.value)
            if run.is_reference or cell.ratio is None or not math.isfinite(cell.ratio):
                cell.ratio_text = ""
            elif key == "inference_s" and summ.get("inference_s.ratio_low") is not None:
                cell.ratio_text = fmt_ratio_ci(cell.ratio, summ["inference_s.ratio_low"],
                                               summ["inference_s.ratio_high"])
            else:
                cell.ratio_text = report_ratio(cell.ratio)
            if process and summ.get(f"{key}.process") is not None and not summ.get(f"{key}.fallback"):
                cell.extra = f"process {fmt_memory(summ[f'{key}.process'], memory_unit([summ[f'{key}.process']]))}"
            elif process and summ.get(f"{key}.fallback"):
                cell.extra = "whole process"
            elif key == "inference_s" and summ.get("inference_s.p25") is not None and (summ.get("inference_s.n") or 0) > 1:
                processes = summ.get("inference_s.processes") or 1
                cell.extra = (f"IQR {fmt_seconds(summ['inference_s.p25'])}–{fmt_seconds(summ['inference_s.p75'])}, "
                              f"n={summ['inference_s.n']}" + (f" in {processes} processes" if processes > 1 else ""))


def _fill_metrics(sweep: SweepView) -> None:
    present: list[str] = []
    for run in sweep.runs:
        for name, row in run.quality.items():
            if row.status == "ok" and name not in present:
                present.append(name)
            if row.status in ("unavailable", "error") and row.reason:
                reasons = sweep.unavailable.setdefault(name, [])
                if row.reason not in reasons:
                    reasons.append(row.reason)
            if row.status == "ok" and row.reason:
                notes = sweep.notes.setdefault(name, [])
                if row.reason not in notes:
                    notes.append(row.reason)
    order = {m.name: i for i, m in enumerate(METRICS)}
    sweep.metrics = [METRICS.get(n) for n in sorted(present, key=lambda n: order.get(n, 99)) if n in METRICS]
