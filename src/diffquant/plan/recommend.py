"""``diffquant recommend``: the Pareto-best recipes under a memory budget.

Candidates come from the results database (measured runs of the model on the device) and, for
recipes never measured there, from ``plan`` (marked "predicted"). A candidate's memory is the larger
of its load peak and its generation peak: a recipe that cannot be loaded in the budget does not fit.
Among the candidates that pass every limit (budget, --max-latency, --min-quality), the Pareto set
over memory, latency and quality is recommended; the rest are listed with the reason they lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from diffquant.errors import DiffquantError
from diffquant.plan.runtime import CUDA_CONTEXT_BYTES

MIB = 1024 * 1024


@dataclass(frozen=True)
class QualityValue:
    metric: str
    mean: float
    ci_low: float | None
    ci_high: float | None
    higher_is_better: bool

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "higher_is_better": self.higher_is_better}


@dataclass(frozen=True)
class Candidate:
    recipe: str
    source: str  # "measured" | "predicted"
    memory_bytes: int | None  # max(load peak, generation peak)
    latency_s: float | None = None  # call latency p50 (measured only)
    quality: QualityValue | None = None
    run_id: int | None = None
    excluded: str | None = None  # why it is not recommended
    tradeoff: str | None = None  # against the first recommendation
    weights_bytes: int | None = None  # stored weights (predicted): more means closer to unquantized

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "source": self.source, "memory_bytes": self.memory_bytes,
                "latency_s": self.latency_s, "quality": self.quality.to_dict() if self.quality else None,
                "run_id": self.run_id, "excluded": self.excluded, "tradeoff": self.tradeoff,
                "weights_bytes": self.weights_bytes}


@dataclass(frozen=True)
class Recommendation:
    model: str
    device: str
    budget_bytes: int
    recommended: list[Candidate]
    excluded: list[Candidate]
    smallest: Candidate | None  # the candidate with the least memory, when nothing fits
    quality_metric: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return bool(self.recommended)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "diffquant.recommend/1", "model": self.model, "device": self.device,
                "budget_bytes": self.budget_bytes, "fits": self.fits, "quality_metric": self.quality_metric,
                "recommended": [c.to_dict() for c in self.recommended],
                "excluded": [c.to_dict() for c in self.excluded],
                "smallest": self.smallest.to_dict() if self.smallest else None, "notes": self.notes}


def parse_min_quality(text: str | None) -> tuple[str, float] | None:
    """'psnr=30' -> ('psnr', 30.0)."""
    if not text:
        return None
    metric, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = None
    if not sep or not metric.strip() or number is None:
        raise DiffquantError(f"Cannot read --min-quality {text!r}.",
                             hint="write METRIC=VALUE, e.g. --min-quality psnr=30 or --min-quality lpips=0.1 "
                                  "(for a lower-is-better metric the value is a maximum)")
    return metric.strip(), number


def measured_candidates(db_path: Path, model: str, device: str, metric: str | None
                        ) -> tuple[list[Candidate], str | None]:
    """The latest run of each recipe of ``model`` on ``device`` in the database, and the quality
    metric used (the one asked for, else the first one scored: psnr when present)."""
    from diffquant.quality.store import read_quality
    from diffquant.store import ResultsDB
    from diffquant.store.summary import run_device

    cuda = device.startswith("cuda")
    with ResultsDB(db_path) as db:
        runs = [r for r in db.runs(model=model) if run_device(r).startswith("cuda") == cuda]
        scores = read_quality(db.connection)
    latest: dict[str, Any] = {}
    for run in runs:
        latest[run.recipe] = run
    if metric is None:
        scored = [m for r in latest.values() for m, q in scores.get(r.id, {}).items() if q.status == "ok"]
        metric = "psnr" if "psnr" in scored else (scored[0] if scored else None)
    out = []
    for recipe, run in latest.items():
        if not run.ok:
            out.append(Candidate(recipe, "measured", None, run_id=run.id,
                                 excluded=f"its run failed: {(run.error or 'unknown error').splitlines()[0]}"))
            continue
        out.append(Candidate(recipe, "measured", _measured_memory(run.metrics, cuda),
                             latency_s=_num(run.metrics.get("call.latency_s.p50")),
                             quality=_quality(scores.get(run.id, {}), metric), run_id=run.id))
    return out, metric


def _measured_memory(metrics: dict[str, Any], cuda: bool) -> int | None:
    if cuda:
        keys = (("load.peak_gpu_used_mib.nvml", "gen.peak_gpu_used_mib.nvml"),
                ("load.cuda_max_reserved_mib", "gen.cuda_max_reserved_mib"))
    else:
        keys = (("load.peak_rss_mib", "gen.peak_rss_mib"),)
    for i, pair in enumerate(keys):
        values = [_num(metrics.get(k)) for k in pair]
        known = [v for v in values if v is not None]
        if known:
            # torch's counters leave out the CUDA context, which a device budget must hold too
            extra = CUDA_CONTEXT_BYTES if cuda and i > 0 else 0
            return int(max(known) * MIB) + extra
    return None


def _quality(rows: dict[str, Any], metric: str | None) -> QualityValue | None:
    row = rows.get(metric) if metric else None
    if row is None or row.status not in ("ok", "reference") or row.mean is None:
        return None
    return QualityValue(metric or "", float(row.mean), row.ci_low, row.ci_high, bool(row.higher_is_better))


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def predicted_candidates(model: str, device: str, recipes: Sequence[str] | None) -> list[Candidate]:
    from diffquant.plan.planner import plan_model

    out = []
    for r in plan_model(model, recipes, device=device).recipes:
        if r.memory is None or not r.runs_here:
            out.append(Candidate(r.recipe, "predicted", r.memory.peak_bytes if r.memory else None,
                                 excluded=f"cannot run on {device}: {r.why_not}"))
            continue
        out.append(Candidate(r.recipe, "predicted", max(r.memory.peak_bytes, r.memory.load_peak_bytes),
                             weights_bytes=r.memory.weights_bytes))
    return out


def _better(a: QualityValue | None, b: QualityValue | None) -> int:
    """1 if a is better than b, -1 if worse, 0 if equal or not comparable."""
    if a is None or b is None or a.metric != b.metric:
        return 0
    if a.mean == b.mean:
        return 0
    return 1 if (a.mean > b.mean) == a.higher_is_better else -1


def dominates(a: Candidate, b: Candidate) -> bool:
    """a is at least as good as b on memory, latency and quality, and better on one of them. Only
    measured candidates are compared on latency and quality; a predicted one only on memory against
    another predicted one, so an unmeasured recipe is never dropped for what nobody has measured."""
    if a.source != b.source or a.memory_bytes is None or b.memory_bytes is None:
        return False
    if a.source == "predicted":
        return False
    axes = [(b.memory_bytes > a.memory_bytes) - (b.memory_bytes < a.memory_bytes)]
    if a.latency_s is not None and b.latency_s is not None:
        axes.append((b.latency_s > a.latency_s) - (b.latency_s < a.latency_s))
    if a.quality is not None and b.quality is not None:
        axes.append(_better(a.quality, b.quality))
    elif (a.quality is None) != (b.quality is None):
        return False  # one has a quality score and the other none: not comparable
    return all(x >= 0 for x in axes) and any(x > 0 for x in axes)


def recommend(model: str, budget_bytes: int, *, device: str = "cuda", db_path: Path | None = None,
              max_latency_s: float | None = None, min_quality: tuple[str, float] | None = None,
              recipes: Sequence[str] | None = None, predict: bool = True) -> Recommendation:
    """The Pareto-best recipes for ``model`` under ``budget_bytes`` (see the module docstring)."""
    metric = min_quality[0] if min_quality else None
    measured: list[Candidate] = []
    notes: list[str] = []
    if db_path is not None:
        measured, metric = measured_candidates(db_path, model, device, metric)
        if not measured:
            notes.append(f"the database holds no runs of {model} on {device}: every figure is predicted")
    have = {c.recipe for c in measured}
    predicted: list[Candidate] = []
    if predict:
        try:
            predicted = [c for c in predicted_candidates(model, device, recipes) if c.recipe not in have]
        except DiffquantError as exc:
            if not measured:
                raise
            notes.append(f"no predictions for unmeasured recipes: {exc.what}")
    candidates = measured + predicted
    if not candidates:
        raise DiffquantError(f"No recipes to compare for {model} on {device}.",
                             hint="run `diffquant bench MODEL` first, or drop --no-predict")
    judged = [_judge(c, budget_bytes, max_latency_s, min_quality) for c in candidates]
    passing = [c for c in judged if c.excluded is None]
    front = [c for c in passing if not any(dominates(o, c) for o in passing if o is not c)]
    losers = [replace(c, excluded=_dominated_reason(c, front)) for c in passing if c not in front]
    front.sort(key=_rank)
    if front and front[0].source == "predicted":
        notes.append("nothing measured fits: predicted recipes are ranked without offload first, then by "
                     "the most weight bytes (more bits per weight); measure them with `diffquant bench`")
    best = front[0] if front else None
    recommended = [c if c is best else replace(c, tradeoff=_tradeoff(c, best)) for c in front]
    excluded = [c for c in judged if c.excluded is not None] + losers
    sized = [c for c in judged if c.memory_bytes is not None]
    smallest = min(sized, key=lambda c: c.memory_bytes or 0) if sized and not front else None
    return Recommendation(model=model, device=device, budget_bytes=budget_bytes, recommended=recommended,
                          excluded=excluded, smallest=smallest, quality_metric=metric, notes=notes)


def _rank(c: Candidate) -> tuple[int, float, float, float]:
    """Measured before predicted. Measured: the best quality, then the lowest latency, then the least
    memory. Predicted (no quality or latency known): a prior -- no offload first (offload costs time),
    then the most stored weight bytes (more bits per weight, closer to the unquantized model)."""
    if c.source == "predicted":
        offload = int("offload" in c.recipe)
        return (1, float(offload), -float(c.weights_bytes or 0), float(c.memory_bytes or 0))
    q = c.quality
    quality = -(q.mean if q.higher_is_better else -q.mean) if q else 0.0
    return (0, quality, c.latency_s or 0.0, float(c.memory_bytes or 0))


def _judge(c: Candidate, budget: int, max_latency: float | None, min_quality: tuple[str, float] | None
           ) -> Candidate:
    from diffquant.plan.budget import format_bytes

    if c.excluded:
        return c
    if c.memory_bytes is None:
        return replace(c, excluded="no memory figure recorded")
    if c.memory_bytes > budget:
        return replace(c, excluded=f"needs {format_bytes(c.memory_bytes)} ({c.source}), over the "
                                   f"{format_bytes(budget)} budget")
    if max_latency is not None and c.latency_s is not None and c.latency_s > max_latency:
        return replace(c, excluded=f"{c.latency_s:.2f} s per call, over --max-latency {max_latency:g} s")
    if min_quality is not None:
        metric, limit = min_quality
        q = c.quality
        if q is None:
            return replace(c, excluded=f"no {metric} score (not measured): --min-quality needs one")
        if (q.mean < limit) if q.higher_is_better else (q.mean > limit):
            word = "below" if q.higher_is_better else "above"
            return replace(c, excluded=f"{metric} {q.mean:.3g} {word} --min-quality {limit:g}")
    return c


def _dominated_reason(c: Candidate, front: list[Candidate]) -> str:
    winner = next(o for o in front if dominates(o, c))
    return f"dominated by {winner.recipe}: " + (_tradeoff(c, winner) or "no better on any axis")


def _tradeoff(c: Candidate, ref: Candidate | None) -> str | None:
    """c against ref: memory, latency and quality differences, in words."""
    from diffquant.plan.budget import format_bytes

    if ref is None:
        return None
    parts = []
    if c.memory_bytes is not None and ref.memory_bytes is not None:
        diff = c.memory_bytes - ref.memory_bytes
        parts.append(f"{'+' if diff >= 0 else '-'}{format_bytes(abs(diff))} memory")
    if c.latency_s is not None and ref.latency_s:
        parts.append(f"{c.latency_s / ref.latency_s:.2f}x latency")
    if c.quality is not None and ref.quality is not None and c.quality.metric == ref.quality.metric:
        ci = (f" [{c.quality.ci_low:.3g}, {c.quality.ci_high:.3g}]"
              if c.quality.ci_low is not None and c.quality.ci_high is not None else "")
        parts.append(f"{c.quality.metric} {c.quality.mean:.3g}{ci} vs {ref.quality.mean:.3g}")
    if c.source == "predicted":
        parts.append("predicted, not measured")
    return ", ".join(parts) or None
