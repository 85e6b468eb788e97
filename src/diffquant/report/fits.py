"""The report's "fits in N GB" section: for common memory sizes, which measured recipes fit (the
larger of the load peak and the generation peak) and the best of them by the sweep's primary quality
metric, else the fastest. No torch import here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from diffquant.report.collect import RunView, SweepView

MIB = 2**20
# Common GPU and RAM sizes in GB, read as --budget reads them: 2^30 bytes (GPU memory is binary).
SIZES_GB = (0.5, 1, 2, 4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 141)


def need_bytes(run: RunView, device: str) -> float | None:
    """Memory a run needed: the generation peak column, or the load peak when that was higher."""
    peak = run.cells["peak_mib"].value if "peak_mib" in run.cells else None
    key = "load.cuda_max_reserved_mib" if device.startswith("cuda") else "load.peak_rss_mib"
    load = run.run.metrics.get(key)
    values = [v for v in (peak, load) if isinstance(v, (int, float))]
    return max(values) * MIB if values else None


def fits_rows(sweep: SweepView) -> list[dict[str, Any]]:
    """One row per size from the first that fits a recipe to the first that fits them all."""
    needs = {r.recipe: need_bytes(r, sweep.device) for r in sweep.runs}
    sized = [r for r in sweep.runs if needs[r.recipe] is not None]
    if not sized:
        return []
    metric = sweep.primary_metric
    rows = []
    for size in SIZES_GB:
        fitting = [r for r in sized if (needs[r.recipe] or 0) <= size * 2**30]
        if not fitting:
            continue
        best = _best(fitting, metric.name if metric else None, bool(metric and metric.higher_is_better))
        rows.append({"budget": f"{size:g} GB", "count": len(fitting), "total": len(sized),
                     "recipes": ", ".join(r.recipe for r in fitting), "best": best.recipe,
                     "best_text": best.quality_text(metric.name) if metric else "",
                     "metric": metric.name if metric else ""})
        if len(fitting) == len(sized):
            break
    return rows


def _best(runs: list[RunView], metric: str | None, higher: bool) -> RunView:
    def key(r: RunView) -> tuple[float, float]:
        row = r.score(metric) if metric else None
        quality = (row.mean if higher else -row.mean) if row is not None and row.mean is not None else float("-inf")
        if r.is_reference and metric:
            quality = float("inf")  # the reference is what the others are scored against
        latency = r.cells["inference_s"].value if "inference_s" in r.cells else None
        return (-quality, latency if isinstance(latency, (int, float)) else float("inf"))

    return min(runs, key=key)
