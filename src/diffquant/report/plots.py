"""The report's plots, drawn with matplotlib (Agg, no pyplot state) and returned as inline SVG:
peak memory against latency, and quality against peak memory with the Pareto front marked."""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from diffquant.figures import MIB_PER_GIB, metric_title

if TYPE_CHECKING:  # pragma: no cover
    from diffquant.quality.registry import MetricInfo
    from diffquant.report.collect import SweepView

REF_COLOUR = "#185faa"
RUN_COLOUR = "#5f636e"
FRONT_COLOUR = "#d0471f"


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float
    is_reference: bool = False
    y_low: float | None = None
    y_high: float | None = None


def pareto_front(points: list[Point], higher_is_better: bool) -> list[Point]:
    """Points no other point beats on both axes (less memory ``x``, better quality ``y``), by ``x``.

    ``inf`` quality (identical to the reference) counts as the best possible.
    """
    def better(a: float, b: float) -> bool:
        return a > b if higher_is_better else a < b

    ordered = sorted(points, key=lambda p: (p.x, -p.y if higher_is_better else p.y))
    front: list[Point] = []
    for point in ordered:
        if not front or better(point.y, front[-1].y):
            front.append(point)
    return front


def _figure(width: float = 6.4, height: float = 4.0) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.grid(True, color="#e4e6eb", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _svg(fig: Any, salt: str) -> str:
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buffer, format="svg")
    text = buffer.getvalue()
    text = re.sub(r"^<\?xml[^>]*>\s*", "", text)
    text = re.sub(r"<!DOCTYPE[^>]*>\s*", "", text)
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.DOTALL)
    return text.replace("<svg ", f'<svg role="img" aria-label="{salt}" ', 1)


def label_offsets(points: list[Point]) -> list[int]:
    """Vertical offsets (in points) that keep labels of nearby points from printing on each other:
    a label closer than ~12% of the x range and ~5% of the y range to one already placed moves down."""
    finite = [p for p in points if math.isfinite(p.y)]
    xs = [p.x for p in points] or [0.0]
    ys = [p.y for p in finite] or [0.0]
    sx, sy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    placed: list[tuple[float, float, int]] = []
    offsets = []
    for p in points:
        y = p.y if math.isfinite(p.y) else max(ys)
        shift = 0
        while any(abs(p.x - px) / sx < 0.12 and abs(y - py) / sy < 0.05 and shift == ps for px, py, ps in placed):
            shift -= 11
        placed.append((p.x, y, shift))
        offsets.append(shift)
    return offsets


def _annotate(ax: Any, points: list[Point]) -> None:
    for p, dy in zip(points, label_offsets(points)):
        ax.annotate(p.label, (p.x, p.y), xytext=(5, 4 + dy), textcoords="offset points", fontsize=8,
                    color=REF_COLOUR if p.is_reference else "#202028")


def _memory(sweep: SweepView) -> tuple[str, str, float] | None:
    col = sweep.column("peak_mib")
    if col is None:
        return None
    scale = MIB_PER_GIB if col.unit == "GiB" else 1.0
    return f"{col.title} ({col.label}, {col.unit})", col.unit, scale


def memory_latency_svg(sweep: SweepView) -> str | None:
    """Peak memory (x) against inference time (y), one labelled point per recipe."""
    mem = _memory(sweep)
    lat = sweep.column("inference_s")
    if mem is None or lat is None:
        return None
    title, _, scale = mem
    points = [Point(r.recipe, r.cells["peak_mib"].value / scale, r.cells["inference_s"].value, r.is_reference)
              for r in sweep.runs
              if r.cells["peak_mib"].value is not None and r.cells["inference_s"].value is not None]
    if not points:
        return None
    fig, ax = _figure()
    for p in points:
        ax.scatter([p.x], [p.y], s=60 if p.is_reference else 36, marker="*" if p.is_reference else "o",
                   color=REF_COLOUR if p.is_reference else RUN_COLOUR, zorder=3)
    _annotate(ax, points)
    ax.set_xlabel(title)
    ax.set_ylabel(f"{lat.title} ({lat.label}, {lat.unit})")
    ax.set_title("Peak memory vs latency (lower left is better)", fontsize=10)
    ax.margins(x=0.2, y=0.2)
    return _svg(fig, f"memory-latency-{sweep.anchor}")


def quality_memory_svg(sweep: SweepView, metric: MetricInfo) -> str | None:
    """Quality (y, mean with 95% CI) against peak memory (x); the Pareto front drawn as a step line."""
    mem = _memory(sweep)
    if mem is None:
        return None
    title, _, scale = mem
    points: list[Point] = []
    for run in sweep.runs:
        peak = run.cells["peak_mib"].value
        if peak is None:
            continue
        row = run.quality.get(metric.name)
        if row is not None and row.status == "ok" and row.mean is not None:
            points.append(Point(run.recipe, peak / scale, row.mean, run.is_reference, row.ci_low, row.ci_high))
        elif run.is_reference and metric.needs_reference and metric.perfect is not None:
            points.append(Point(run.recipe, peak / scale, metric.perfect, True))  # exact by definition
    if len(points) < 2 and not any(not p.is_reference for p in points):
        return None
    finite = [v for p in points for v in (p.y, p.y_low, p.y_high) if v is not None and math.isfinite(v)]
    if not finite:
        finite = [0.0, 1.0]
    lo, hi = min(finite), max(finite)
    span = (hi - lo) or max(abs(hi), 1.0) * 0.1
    ceiling = hi + 0.25 * span  # where "identical to the reference" (inf) is drawn

    def shown(y: float) -> float:
        return ceiling if math.isinf(y) and y > 0 else (lo - 0.25 * span if math.isinf(y) else y)

    fig, ax = _figure()
    unit = f", {metric.unit}" if metric.unit else ""
    if any(math.isinf(p.y) for p in points):
        ax.axhline(ceiling, color="#b8bcc6", linestyle=":", linewidth=1)
        ax.annotate("identical to the reference (∞)", (0.99, ceiling), xycoords=("axes fraction", "data"),
                    xytext=(0, -10), textcoords="offset points", fontsize=7, color="#6b6f7a", ha="right")
    front = pareto_front(points, metric.higher_is_better)
    if len(front) > 1:
        xs, ys = [p.x for p in front], [shown(p.y) for p in front]
        ax.step(xs, ys, where="post", color=FRONT_COLOUR, linewidth=1.5, alpha=0.8, label="Pareto front", zorder=2)
    for p in points:
        y = shown(p.y)
        on_front = p in front
        if p.y_low is not None and p.y_high is not None and math.isfinite(p.y_low) and math.isfinite(p.y_high):
            ax.errorbar([p.x], [y], yerr=[[y - p.y_low], [p.y_high - y]], fmt="none", ecolor="#9aa0ab",
                        capsize=3, linewidth=1, zorder=2)
        ax.scatter([p.x], [y], s=70 if p.is_reference else 40, marker="*" if p.is_reference else "o",
                   color=REF_COLOUR if p.is_reference else (FRONT_COLOUR if on_front else RUN_COLOUR),
                   edgecolors="white", linewidths=0.6, zorder=3)
    _annotate(ax, [Point(p.label, p.x, shown(p.y), p.is_reference) for p in points])
    direction = "higher" if metric.higher_is_better else "lower"
    ax.set_xlabel(title)
    ax.set_ylabel(f"{metric_title(metric.name)}{unit} ({direction} is better)")
    ax.set_title(f"{metric_title(metric.name)} vs peak memory (mean, 95% CI; Pareto front in red)", fontsize=10)
    ax.margins(x=0.2, y=0.15)
    if len(front) > 1:
        ax.legend(loc="best", fontsize=8, frameon=False)
    return _svg(fig, f"quality-{metric.name}-{sweep.anchor}")


def pareto3_svg(sweep: SweepView, metric: MetricInfo) -> str | None:
    """Memory (x) x latency (y) x quality (colour): runs no other run beats on all three are ringed."""
    mem = _memory(sweep)
    lat = sweep.column("inference_s")
    if mem is None or lat is None:
        return None
    title, _, scale = mem
    pts: list[tuple[Point, float]] = []  # (point, quality: higher is better, inf for the reference)
    for run in sweep.runs:
        peak, latency = run.cells["peak_mib"].value, run.cells["inference_s"].value
        row = run.quality.get(metric.name)
        if peak is None or latency is None:
            continue
        if run.is_reference:
            quality = math.inf
        elif row is not None and row.status == "ok" and row.mean is not None:
            quality = row.mean if metric.higher_is_better else -row.mean
        else:
            continue
        pts.append((Point(run.recipe, peak / scale, latency, run.is_reference), quality))
    if len(pts) < 2:
        return None

    def dominated(a: tuple[Point, float]) -> bool:
        return any(b is not a and b[0].x <= a[0].x and b[0].y <= a[0].y and b[1] >= a[1]
                   and (b[0].x < a[0].x or b[0].y < a[0].y or b[1] > a[1]) for b in pts)

    finite = [q for _, q in pts if math.isfinite(q)] or [0.0]
    top = max(finite) + (max(finite) - min(finite) or 1.0) * 0.1
    fig, ax = _figure()
    colours = [min(q, top) for _, q in pts]
    scatter = ax.scatter([p.x for p, _ in pts], [p.y for p, _ in pts], c=colours, cmap="viridis", s=50,
                         edgecolors="white", linewidths=0.6, zorder=3)
    front = [p for p, q in pts if not dominated((p, q))]
    ax.scatter([p.x for p in front], [p.y for p in front], s=160, facecolors="none", edgecolors=FRONT_COLOUR,
               linewidths=1.4, zorder=4, label="Pareto-optimal (memory, latency, quality)")
    _annotate(ax, [p for p, _ in pts])
    bar = fig.colorbar(scatter, ax=ax)
    sign = "" if metric.higher_is_better else "−"
    bar.set_label(f"{sign}{metric_title(metric.name)} (reference drawn at the top)", fontsize=8)
    ax.set_xlabel(title)
    ax.set_ylabel(f"{lat.title} ({lat.label}, {lat.unit})")
    ax.set_title(f"Memory × latency × {metric_title(metric.name)} (Pareto-optimal ringed)", fontsize=10)
    ax.margins(x=0.2, y=0.2)
    ax.legend(loc="best", fontsize=8, frameon=False)
    return _svg(fig, f"pareto3-{metric.name}-{sweep.anchor}")
