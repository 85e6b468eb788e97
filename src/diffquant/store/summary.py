"""The seed's table from stored runs: Memory after loading · Peak memory · Inference time ·
Compile time (plus weight bytes and load peak), with ratios against a reference recipe.

Which counter fills a column depends on the device the run used, and the table says which:

========================  ===================================  ==================================
column                    CPU run (whole process beside)       CUDA run
========================  ===================================  ==================================
Memory after loading      ``load.model_rss_mib`` (load.rss_mib)   ``load.cuda_reserved_mib``
Peak memory               ``gen.model_peak_rss_mib`` (gen.peak_rss_mib)  ``gen.cuda_max_reserved_mib``
Load peak                 ``load.model_peak_rss_mib`` (load.peak_rss_mib)  ``load.cuda_max_reserved_mib``
Inference time            ``call.latency_s.p50`` [p25–p75]     ``call.latency_s.p50`` [p25–p75]
Compile time              ``compile.time_s``                    ``compile.time_s``
Weights                   ``weights.total_bytes``               ``weights.total_bytes``
========================  ===================================  ==================================

On CPU the memory columns show the *model's own* memory: the process's RSS minus the baseline the
worker took after importing every library and before reading a weight (bench/phases.py). A run
recorded before those counters existed shows its whole-process figure instead, marked "process".

Ratios (in brackets after a value) compare runs of the same sweep (same model, device and
settings) with the reference recipe's run of that sweep. The latency ratio is the ratio of p50s
with a bootstrap 95% CI over both runs' steady calls, resampling their worker processes first
where a run had several (``bench --processes``); "≈" marks a ratio whose CI holds 1.0.
A run whose host was busy with other work is marked "contended" (``host.contended``). No torch
import here (numpy, for the bootstrap, only when latency samples are present).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from diffquant.figures import fmt_mib, fmt_ratio, fmt_ratio_ci, fmt_s  # re-exported: scripts use them
from diffquant.store.db import RunRow
from diffquant.store.reference import choose_reference

if TYPE_CHECKING:  # pragma: no cover
    from diffquant.quality.bootstrap import Estimate

MIB = 1024 * 1024


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    kind: str  # "mib" | "s" | "ratio" | "text"
    cpu_counter: str | None = None
    cuda_counter: str | None = None
    cpu_process_counter: str | None = None  # CPU: the whole process's figure, shown beside

    def counter(self, device: str) -> str | None:
        return self.cuda_counter if device.startswith("cuda") else self.cpu_counter

    def process_counter(self, device: str) -> str | None:
        return None if device.startswith("cuda") else self.cpu_process_counter


COLUMNS: tuple[Column, ...] = (
    Column("after_load_mib", "Memory after loading", "mib", "load.model_rss_mib", "load.cuda_reserved_mib",
           "load.rss_mib"),
    Column("peak_mib", "Peak memory", "mib", "gen.model_peak_rss_mib", "gen.cuda_max_reserved_mib",
           "gen.peak_rss_mib"),
    Column("inference_s", "Inference time", "s", "call.latency_s.p50", "call.latency_s.p50"),
    Column("compile_s", "Compile time", "s", "compile.time_s", "compile.time_s"),
    Column("weights_mib", "Weights", "mib", "weights.total_bytes", "weights.total_bytes"),
    Column("load_peak_mib", "Load peak", "mib", "load.model_peak_rss_mib", "load.cuda_max_reserved_mib",
           "load.peak_rss_mib"),
)
RATIO_KEYS = ("after_load_mib", "peak_mib", "inference_s", "weights_mib")
LATENCY_SAMPLES = "call.latency_s.samples"
# a run measured in several worker processes (bench --processes N; bench/processes.py)
LATENCY_BY_PROCESS = "call.latency_s.by_process"
LATENCY_PROCESS_P50S = "call.latency_s.process_p50s"


def run_device(run: RunRow) -> str:
    return str(run.settings.get("device") or run.env.get("device") or "cpu")


def _number(run: RunRow, name: str | None) -> float | None:
    if name is None:
        return None
    value = run.metrics.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return value / MIB if name.endswith("_bytes") else float(value)


def _value(run: RunRow, column: Column) -> tuple[float | None, bool]:
    """The column's figure for ``run`` and whether it is the whole-process fallback (a CPU run
    recorded before the model's own counters existed)."""
    device = run_device(run)
    value = _number(run, column.counter(device))
    if value is None and column.process_counter(device):
        fallback = _number(run, column.process_counter(device))
        return fallback, fallback is not None
    return value, False


def is_contended(run: RunRow) -> bool:
    return bool(run.metrics.get("host.contended"))


def latency_groups(metrics: dict[str, Any]) -> list[list[float]]:
    """A run's steady-call latencies grouped by worker process: ``call.latency_s.by_process`` where
    the run had several, else its one process's ``call.latency_s.samples`` ([] without samples)."""
    by_process = metrics.get(LATENCY_BY_PROCESS)
    if isinstance(by_process, list) and by_process and all(isinstance(g, list) for g in by_process):
        return [_numbers(g) for g in by_process]
    samples = latency_samples(metrics)
    return [samples] if samples else []


def latency_samples(metrics: dict[str, Any]) -> list[float]:
    """One worker's steady-call latencies (``call.latency_s.samples``; [] without them)."""
    values = metrics.get(LATENCY_SAMPLES)
    return _numbers(values) if isinstance(values, list) else []


def _numbers(values: list[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def latency_ratio(metrics: dict[str, Any], reference_metrics: dict[str, Any]) -> Estimate | None:
    """The p50 latency ratio of two runs with its bootstrap 95% CI (``quality.bootstrap.Estimate``;
    None without samples): over both runs' steady calls, and over their worker processes too where
    a run had several (``bootstrap_ratio_nested``; ``n`` is then the fewer processes)."""
    from diffquant.quality.bootstrap import bootstrap_ratio_nested

    mine, theirs = latency_groups(metrics), latency_groups(reference_metrics)
    if sum(map(len, mine)) < 2 or sum(map(len, theirs)) < 2:
        return None
    return bootstrap_ratio_nested(mine, theirs)


def summary_rows(runs: Sequence[RunRow], reference: str = "bf16") -> list[dict[str, Any]]:
    """One dict per run: recipe, status, the seed's columns and ``<key>.ratio`` against the
    reference run of the same sweep (``store.reference``; None where either side is missing); on CPU
    ``<key>.process`` (the whole process's figure) and ``<key>.fallback``; the latency's IQR
    (``inference_s.p25``/``.p75``, ``.n``) and the ratio's CI (``inference_s.ratio_low``/``_high``);
    ``contended``."""
    runs = list(runs)
    refs = [choose_reference(run, runs, reference, same_sweep_only=True)[0] for run in runs]
    rows = []
    for run, ref in zip(runs, refs):
        row: dict[str, Any] = {"id": run.id, "sweep_id": run.sweep_id, "model": run.model,
                               "recipe": run.recipe, "device": run_device(run), "status": run.status,
                               "error": first_line(run.error) if run.error else None,
                               "contended": is_contended(run) if run.ok else None,
                               "is_reference": ref is run}
        device = run_device(run)
        for column in COLUMNS:
            value, fallback = _value(run, column) if run.ok else (None, False)
            row[column.key], row[f"{column.key}.fallback"] = value, fallback
            if column.process_counter(device):
                row[f"{column.key}.process"] = _number(run, column.process_counter(device)) if run.ok else None
        for key in RATIO_KEYS:
            column = next(c for c in COLUMNS if c.key == key)
            mine = row[key]
            theirs, their_fallback = _value(ref, column) if ref else (None, False)
            same_kind = their_fallback == row[f"{key}.fallback"]  # model over model, process over process
            row[f"{key}.ratio"] = (mine / theirs) if (mine is not None and theirs and same_kind) else None
        _latency(row, run, ref)
        rows.append(row)
    return rows


def _latency(row: dict[str, Any], run: RunRow, ref: RunRow | None) -> None:
    """The latency's IQR and sample count, and the bootstrap CI of its ratio to the reference."""
    row["inference_s.p25"] = _number(run, "call.latency_s.p25") if run.ok else None
    row["inference_s.p75"] = _number(run, "call.latency_s.p75") if run.ok else None
    n = run.metrics.get("call.latency_s.n")
    row["inference_s.n"] = int(n) if isinstance(n, (int, float)) and run.ok else None
    row["inference_s.processes"] = int(run.metrics.get("run.processes") or 1) if run.ok else None
    row["inference_s.ratio_low"] = row["inference_s.ratio_high"] = None
    if not run.ok or ref is None or ref is run or row.get("inference_s.ratio") is None:
        return
    estimate = latency_ratio(run.metrics, ref.metrics)
    if estimate is not None:
        row["inference_s.ratio_low"], row["inference_s.ratio_high"] = estimate.ci_low, estimate.ci_high


def counters_legend(devices: Sequence[str]) -> list[str]:
    """'Memory after loading = load.model_rss_mib (cpu; process: load.rss_mib)' lines for the
    devices present, then what the brackets and flags mean."""
    lines = []
    kinds = sorted({"cuda" if d.startswith("cuda") else "cpu" for d in devices})
    for column in COLUMNS:
        names = []
        for k in kinds:
            if column.counter(k):
                process = column.process_counter(k)
                names.append(f"{column.counter(k)} ({k}; process: {process})" if process
                             else f"{column.counter(k)} ({k})")
        lines.append(f"{column.title} = {', '.join(names)}")
    lines.append(LATENCY_NOTE)
    if "cpu" in kinds:
        lines.append(CPU_NOTE)
    return lines


LATENCY_NOTE = ("[p25–p75] n=N after the p50: interquartile range and number of steady calls (call.latency_s.*), "
                "'/P proc' when they come from P fresh worker processes (bench --processes P); the latency ratio "
                "carries a bootstrap 95% CI that resamples the processes, then their calls: with one process each "
                "it covers only that worker's calls, and a fresh worker's speed can differ by more "
                "(use --processes 3 or more for ratios you compare across sweeps), "
                "'≈' where the CI holds 1.0; 'contended' = the host's load average (minus the run's own threads) "
                "exceeded the cores they left free during the run (host.contended): its times are not trustworthy")
CPU_NOTE = ("on CPU, memory is the model's own: RSS minus the worker's baseline after importing every library "
            "(baseline.rss_mib), with the whole process's figure beside ('proc'); memory-mapped bf16 weights "
            "become resident only when first read, so compare Peak memory and Weights; Peak memory leaves out "
            "the runtime's shape-keyed caches that outlive the model (gen.runtime_residue_mib, the same for "
            "every recipe; gen.peak_above_baseline_rss_mib keeps them)")


def first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def fmt_latency(row: dict[str, Any]) -> str:
    """``7.35 s [7.20–7.51] n=5``: p50, interquartile range and the number of steady calls, and
    ``n=9/3 proc`` where they come from several worker processes."""
    text = fmt_s(row.get("inference_s"))
    low, high, n = row.get("inference_s.p25"), row.get("inference_s.p75"), row.get("inference_s.n")
    if row.get("inference_s") is not None and low is not None and high is not None and n and n > 1:
        text += f" [{fmt_s(low)}–{fmt_s(high)}]"
    if n:
        text += f" n={n}"
        processes = row.get("inference_s.processes")
        if processes and processes > 1:
            text += f"/{processes} proc"
    return text


def format_cell(column_kind: str, value: Any) -> str:
    if column_kind == "mib":
        return fmt_mib(value)
    if column_kind == "s":
        return fmt_s(value)
    if column_kind == "ratio":
        return fmt_ratio(value)
    return "-" if value is None else str(value)


def status_text(row: dict[str, Any]) -> str:
    return f"{row['status']} · contended" if row.get("contended") else str(row["status"])


def table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of the summary: recipe, status, then each column's value with
    its ratio to the reference in brackets, e.g. ``12.58 GiB (0.40×) · proc 13.1 GiB``."""
    headers = ["Recipe", "Status"] + [c.title for c in COLUMNS]
    cells = []
    for row in rows:
        line = [row["recipe"], status_text(row)]
        for column in COLUMNS:
            value = row[column.key]
            text = fmt_latency(row) if column.key == "inference_s" else format_cell(column.kind, value)
            ratio = row.get(f"{column.key}.ratio")
            if ratio is not None and value is not None:
                if column.key == "inference_s":
                    text += f" ({fmt_ratio_ci(ratio, row.get('inference_s.ratio_low'), row.get('inference_s.ratio_high'))})"
                else:
                    text += f" ({fmt_ratio(ratio)})"
            if row.get(f"{column.key}.fallback"):
                text += " process"
            elif row.get(f"{column.key}.process") is not None and value is not None:
                text += f" · proc {fmt_mib(row[f'{column.key}.process'])}"
            line.append(text)
        cells.append(line)
    return headers, cells
