"""Scoring runs against the reference: pure functions over :mod:`diffquant.quality.data`.

For every successful run and every metric the result is one :class:`MetricResult`:
``ok`` with per-image values and a bootstrap estimate, ``reference`` for the reference run on a
metric that needs a reference, ``unavailable`` with the reason (missing weights, no reference
run, ...), or ``error`` when the metric itself failed (a bug: the traceback is logged).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from diffquant.quality.batch import Batch, load_rgb
from diffquant.quality.bootstrap import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    Estimate,
    bootstrap_mean,
    paired_difference,
)
from diffquant.quality.data import RunInfo, find_reference, match_images
from diffquant.quality.registry import METRICS, MetricFn, MetricInfo, MetricOptions, MetricUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageScore:
    image_id: Any
    prompt_index: int
    seed: int
    value: float
    reference_image_id: Any = None


@dataclass
class MetricResult:
    run_id: Any
    metric: str
    status: str  # ok | reference | unavailable | error
    reason: str | None = None  # why unavailable / error, or a note on how the metric adapted
    reference_run_id: Any = None
    images: list[ImageScore] = field(default_factory=list)
    estimate: Estimate | None = None  # mean over images, with CI
    delta: Estimate | None = None  # metrics without reference: paired mean difference run - reference


@dataclass(frozen=True)
class BootstrapSettings:
    level: float = DEFAULT_LEVEL
    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED

    def kwargs(self) -> dict[str, Any]:
        return {"level": self.level, "resamples": self.resamples, "seed": self.seed}


class _Session:
    """Loads each metric once and each image once per scoring call."""

    def __init__(self, infos: list[MetricInfo], options: MetricOptions) -> None:
        self.infos = infos
        self.options = options
        self._fns: dict[str, MetricFn | MetricUnavailable] = {}
        self.loader = functools.lru_cache(maxsize=64)(load_rgb)
        self._own: dict[tuple[Any, str], list[float] | MetricUnavailable] = {}
        self._own_notes: dict[tuple[Any, str], list[str]] = {}

    def fn(self, info: MetricInfo) -> MetricFn:
        if info.name not in self._fns:
            try:
                self._fns[info.name] = info.load(self.options)
            except MetricUnavailable as exc:
                self._fns[info.name] = exc
        got = self._fns[info.name]
        if isinstance(got, MetricUnavailable):
            raise got
        return got

    def own_values(self, info: MetricInfo, run: RunInfo) -> tuple[list[float], list[str]]:
        """A no-reference metric on all of ``run``'s images (cached: the reference is reused)."""
        key = (run.id, info.name)
        if key not in self._own:
            images = sorted(run.images, key=lambda i: i.key)
            batch = Batch(model=run.model, prompts=[i.prompt for i in images],
                          image_paths=[i.path for i in images],
                          latent_paths=[i.latents_path for i in images], loader=self.loader)
            try:
                self._own[key] = _checked(self.fn(info)(batch), len(batch), info.name)
            except MetricUnavailable as exc:
                self._own[key] = exc
            self._own_notes[key] = batch.notes
        got = self._own[key]
        if isinstance(got, MetricUnavailable):
            raise got
        return got, self._own_notes[key]


def _checked(values: list[float], n: int, name: str) -> list[float]:
    if len(values) != n:
        raise RuntimeError(f"metric {name} returned {len(values)} values for {n} images")
    return [float(v) for v in values]


def score_runs(runs: list[RunInfo], reference: str = "bf16", metrics: list[str] | None = None,
               options: MetricOptions | None = None, bootstrap: BootstrapSettings | None = None,
               keep: Callable[[Any, str, Any], bool] | None = None) -> list[MetricResult]:
    """Score every successful run with every metric (see the module docstring).

    ``keep(run_id, metric, reference_run_id)`` returning True skips that pair (its stored score
    is still current); nothing is returned for it.
    """
    infos = METRICS.resolve(metrics)
    session = _Session(infos, options or MetricOptions())
    boot = bootstrap or BootstrapSettings()
    ok_runs = [r for r in runs if r.ok and r.images]
    results: list[MetricResult] = []
    for run in ok_runs:
        ref, why = find_reference(run, ok_runs, reference)
        for info in infos:
            if keep is not None and keep(run.id, info.name, ref.id if ref else None):
                continue
            try:
                results.append(_score_one(session, info, run, ref, why, boot))
            except MetricUnavailable as exc:
                results.append(MetricResult(run.id, info.name, "unavailable", str(exc),
                                            ref.id if ref else None))
            except Exception as exc:  # a bug in a metric: keep the record, log the traceback
                log.exception("metric %s failed on run %s", info.name, run.id)
                results.append(MetricResult(run.id, info.name, "error", f"{type(exc).__name__}: {exc}",
                                            ref.id if ref else None))
    return results


def _score_one(session: _Session, info: MetricInfo, run: RunInfo, ref: RunInfo | None, why: str,
               boot: BootstrapSettings) -> MetricResult:
    is_ref = ref is not None and ref.id == run.id
    if info.needs_reference:
        if is_ref:
            return MetricResult(run.id, info.name, "reference", "this run is the reference", run.id)
        if ref is None:
            raise MetricUnavailable(why)
        pairs = match_images(run, ref)
        if not pairs:
            raise MetricUnavailable(f"no image of run {run.id} matches one of reference run {ref.id} "
                                    "(same prompt index, seed and prompt)")
        batch = Batch(model=run.model, prompts=[a.prompt for a, _ in pairs],
                      image_paths=[a.path for a, _ in pairs], reference_paths=[b.path for _, b in pairs],
                      latent_paths=[a.latents_path for a, _ in pairs],
                      reference_latent_paths=[b.latents_path for _, b in pairs], loader=session.loader)
        values = _checked(session.fn(info)(batch), len(pairs), info.name)
        notes = list(batch.notes)
        if len(pairs) < len(run.images):
            notes.append(f"{len(run.images) - len(pairs)} of {len(run.images)} images had no reference match")
        scores = [ImageScore(a.id, a.prompt_index, a.seed, v, b.id) for (a, b), v in zip(pairs, values)]
        return MetricResult(run.id, info.name, "ok", "; ".join(notes) or None, ref.id, scores,
                            bootstrap_mean(values, **boot.kwargs()))
    # no reference needed: score the run's own images, then the paired difference to the reference
    values, notes = session.own_values(info, run)
    images = sorted(run.images, key=lambda i: i.key)
    scores = [ImageScore(i.id, i.prompt_index, i.seed, v) for i, v in zip(images, values)]
    result = MetricResult(run.id, info.name, "ok", "; ".join(notes) or None, ref.id if ref else None,
                          scores, bootstrap_mean(values, **boot.kwargs()))
    if ref is not None and not is_ref:
        try:
            ref_values, _ = session.own_values(info, ref)
        except MetricUnavailable:
            return result
        ref_by_key = {i.key: v for i, v in zip(sorted(ref.images, key=lambda i: i.key), ref_values)}
        own = [(s.value, ref_by_key[(s.prompt_index, s.seed)]) for s in scores
               if (s.prompt_index, s.seed) in ref_by_key]
        if own:
            result.delta = paired_difference([a for a, _ in own], [b for _, b in own], **boot.kwargs())
    return result


def summarize(results: list[MetricResult]) -> dict[str, dict[str, MetricResult]]:
    """Results as ``{run_id: {metric: result}}``."""
    out: dict[str, dict[str, MetricResult]] = {}
    for res in results:
        out.setdefault(res.run_id, {})[res.metric] = res
    return out


def is_number(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


__all__ = ["BootstrapSettings", "ImageScore", "MetricResult", "score_runs", "summarize"]
