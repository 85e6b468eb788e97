"""The seed's table from stored runs: Memory after loading · Peak memory · Inference time ·
Compile time (plus weight bytes and load peak), with ratios against a reference recipe.

Which counter fills a column depends on the device the run used, and the table says which:

========================  ==============================  ==================================
column                    CPU run                         CUDA run
========================  ==============================  ==================================
Memory after loading      ``load.rss_mib``                ``load.cuda_reserved_mib``
Peak memory               ``gen.peak_rss_mib``            ``gen.cuda_max_reserved_mib``
Load peak                 ``load.peak_rss_mib``           ``load.cuda_max_reserved_mib``
Inference time            ``call.latency_s.p50``          ``call.latency_s.p50``
Compile time              ``compile.time_s``              ``compile.time_s``
Weights                   ``weights.total_bytes``         ``weights.total_bytes``
========================  ==============================  ==================================

Ratios (in brackets after a value) compare runs of the same sweep (same model, device and settings) with the reference
recipe's run of that sweep. No torch import here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diffquant.store.db import RunRow

MIB = 1024 * 1024


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    kind: str  # "mib" | "s" | "ratio" | "text"
    cpu_counter: str | None = None
    cuda_counter: str | None = None

    def counter(self, device: str) -> str | None:
        return self.cuda_counter if device.startswith("cuda") else self.cpu_counter


COLUMNS: tuple[Column, ...] = (
    Column("after_load_mib", "Memory after loading", "mib", "load.rss_mib", "load.cuda_reserved_mib"),
    Column("peak_mib", "Peak memory", "mib", "gen.peak_rss_mib", "gen.cuda_max_reserved_mib"),
    Column("inference_s", "Inference time", "s", "call.latency_s.p50", "call.latency_s.p50"),
    Column("compile_s", "Compile time", "s", "compile.time_s", "compile.time_s"),
    Column("weights_mib", "Weights", "mib", "weights.total_bytes", "weights.total_bytes"),
    Column("load_peak_mib", "Load peak", "mib", "load.peak_rss_mib", "load.cuda_max_reserved_mib"),
)
RATIO_KEYS = ("after_load_mib", "peak_mib", "inference_s", "weights_mib")


def run_device(run: RunRow) -> str:
    return str(run.settings.get("device") or run.env.get("device") or "cpu")


def _value(run: RunRow, column: Column) -> float | None:
    name = column.counter(run_device(run))
    if name is None:
        return None
    value = run.metrics.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return value / MIB if name.endswith("_bytes") else float(value)


def summary_rows(runs: Sequence[RunRow], reference: str = "bf16") -> list[dict[str, Any]]:
    """One dict per run: recipe, status, the seed's columns and ``<key>.ratio`` against the
    reference recipe's ok run of the same sweep (None where either side is missing)."""
    refs: dict[str, RunRow] = {}
    for run in runs:
        if run.ok and run.recipe == reference:
            refs[run.sweep_id] = run  # the latest one wins
    rows = []
    for run in runs:
        row: dict[str, Any] = {"id": run.id, "sweep_id": run.sweep_id, "model": run.model,
                               "recipe": run.recipe, "device": run_device(run), "status": run.status,
                               "error": first_line(run.error) if run.error else None}
        ref = refs.get(run.sweep_id)
        for column in COLUMNS:
            row[column.key] = _value(run, column) if run.ok else None
        for key in RATIO_KEYS:
            column = next(c for c in COLUMNS if c.key == key)
            mine, theirs = row[key], (_value(ref, column) if ref else None)
            row[f"{key}.ratio"] = (mine / theirs) if (mine is not None and theirs) else None
        rows.append(row)
    return rows


def counters_legend(devices: Sequence[str]) -> list[str]:
    """'Memory after loading = load.rss_mib (cpu)' lines for the devices present."""
    lines = []
    kinds = sorted({"cuda" if d.startswith("cuda") else "cpu" for d in devices})
    for column in COLUMNS:
        names = [f"{column.counter(k)} ({k})" for k in kinds if column.counter(k)]
        lines.append(f"{column.title} = {', '.join(names)}")
    if "cpu" in kinds:
        lines.append(CPU_NOTE)
    return lines


CPU_NOTE = ("on CPU, memory-mapped bf16 weights become resident only when first read, so an unquantized run's "
            "after-loading RSS leaves most of its weights out: compare Peak memory and Weights")


def first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def fmt_mib(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1024:.3f} GiB" if value >= 10 * 1024 else f"{value:.1f} MiB"


def fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f} s"
    return f"{value:.3g} s" if value >= 0.01 else f"{value * 1000:.3g} ms"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def format_cell(column_kind: str, value: Any) -> str:
    if column_kind == "mib":
        return fmt_mib(value)
    if column_kind == "s":
        return fmt_s(value)
    if column_kind == "ratio":
        return fmt_ratio(value)
    return "-" if value is None else str(value)


def table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of the summary: recipe, status, then each column's value with
    its ratio to the reference in brackets, e.g. ``12.58 GiB (0.40×)``."""
    headers = ["Recipe", "Status"] + [c.title for c in COLUMNS]
    cells = []
    for row in rows:
        line = [row["recipe"], row["status"]]
        for column in COLUMNS:
            text = format_cell(column.kind, row[column.key])
            ratio = row.get(f"{column.key}.ratio")
            if ratio is not None and row[column.key] is not None:
                text += f" ({fmt_ratio(ratio)})"
            line.append(text)
        cells.append(line)
    return headers, cells
