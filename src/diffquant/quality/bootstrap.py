"""Means with seeded percentile-bootstrap confidence intervals (numpy only).

Images are the resampling unit (prompt x seed). For a metric measured against the reference the
values are already paired; for a metric without a reference (CLIP score, shapes adherence) the
interval of the *difference* to the reference is bootstrapped on per-image differences, which is
the paired comparison. NaN values (a failed image) are dropped and ``n`` says how many remain.
``inf`` is kept (PSNR of identical images); quantiles use the inverted CDF so that no ``inf - inf``
interpolation turns into NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from numpy.typing import NDArray

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` images with its bootstrap confidence interval."""

    n: int
    mean: float
    ci_low: float
    ci_high: float
    level: float = DEFAULT_LEVEL

    def contains(self, value: float) -> bool:
        return self.ci_low <= value <= self.ci_high


def bootstrap_mean(values: Sequence[float], *, level: float = DEFAULT_LEVEL,
                   resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Estimate | None:
    """Mean and ``level`` percentile-bootstrap CI of ``values`` (None when there is no value)."""
    import numpy as np

    data = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    n = int(data.size)
    if n == 0:
        return None
    with np.errstate(invalid="ignore"):
        mean = float(data.mean()) if not np.isinf(data).any() else _inf_mean(data)
    if n == 1 or np.all(data == data[0]):
        return Estimate(n, mean, mean, mean, level)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    samples = data[idx]
    with np.errstate(invalid="ignore"):
        means = np.where(np.isinf(samples).any(axis=1), _row_inf_means(samples), samples.mean(axis=1))
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha], method="inverted_cdf")
    low, high = float(low), float(high)
    # the interval always holds the point estimate (a percentile CI can miss it for skewed data)
    return Estimate(n, mean, min(low, mean), max(high, mean), level)


def paired_difference(values: Sequence[float], reference: Sequence[float], **kwargs: float) -> Estimate | None:
    """Bootstrap of the mean per-image difference ``values[i] - reference[i]``."""
    if len(values) != len(reference):
        raise ValueError(f"paired bootstrap needs equal lengths, got {len(values)} and {len(reference)}")
    diffs = [v - r for v, r in zip(values, reference, strict=True)]  # inf - inf -> NaN, dropped
    return bootstrap_mean(diffs, **kwargs)  # type: ignore[arg-type]


def _inf_mean(data: object) -> float:
    import numpy as np

    arr = np.asarray(data)
    if np.isposinf(arr).any() and np.isneginf(arr).any():
        return math.nan
    return float(np.inf if np.isposinf(arr).any() else -np.inf)


def _row_inf_means(samples: object) -> object:
    import numpy as np

    arr = np.asarray(samples)
    pos = np.isposinf(arr).any(axis=1)
    neg = np.isneginf(arr).any(axis=1)
    with np.errstate(invalid="ignore"):
        plain = arr.mean(axis=1)
    return np.where(pos & ~neg, np.inf, np.where(neg & ~pos, -np.inf, plain))


def bootstrap_ratio(values: Sequence[float], reference: Sequence[float], *, q: float = 50.0,
                    level: float = DEFAULT_LEVEL, resamples: int = DEFAULT_RESAMPLES,
                    seed: int = DEFAULT_SEED) -> Estimate | None:
    """``percentile(values, q) / percentile(reference, q)`` with a percentile-bootstrap CI,
    resampling the two samples independently (two runs' call latencies: unpaired). ``n`` is the
    smaller sample's size; None when either side is empty or the reference's statistic is 0."""
    import numpy as np

    a = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    b = np.asarray([v for v in reference if math.isfinite(v)], dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return None
    denominator = float(np.percentile(b, q))
    if denominator == 0:
        return None
    point = float(np.percentile(a, q)) / denominator
    rng = np.random.default_rng(seed)
    sa = np.percentile(a[rng.integers(0, a.size, size=(resamples, a.size))], q, axis=1)
    sb = np.percentile(b[rng.integers(0, b.size, size=(resamples, b.size))], q, axis=1)
    return _ratio_interval(sa, sb, point, int(min(a.size, b.size)), level)


def bootstrap_ratio_nested(groups: Sequence[Sequence[float]], reference_groups: Sequence[Sequence[float]], *,
                           q: float = 50.0, level: float = DEFAULT_LEVEL, resamples: int = DEFAULT_RESAMPLES,
                           seed: int = DEFAULT_SEED) -> Estimate | None:
    """The ratio of ``bootstrap_ratio`` when each side's values come in groups (one group per worker
    process): every resample draws the groups with replacement, then the values within each drawn
    group, so the interval also covers how much a fresh process's speed differs (a two-stage, or
    cluster, bootstrap). The point estimate is the percentile over all values pooled. One group per
    side is exactly ``bootstrap_ratio`` (``n``: the smaller sample); otherwise ``n`` is the smaller
    side's number of groups. With few groups (3) the interval is still somewhat too narrow: the
    groups' spread is estimated from only those few."""
    import numpy as np

    a = [np.asarray([v for v in g if math.isfinite(v)], dtype=np.float64) for g in groups]
    b = [np.asarray([v for v in g if math.isfinite(v)], dtype=np.float64) for g in reference_groups]
    a, b = [g for g in a if g.size], [g for g in b if g.size]
    if not a or not b:
        return None
    if len(a) == 1 and len(b) == 1:
        return bootstrap_ratio(a[0].tolist(), b[0].tolist(), q=q, level=level, resamples=resamples, seed=seed)
    denominator = float(np.percentile(np.concatenate(b), q))
    if denominator == 0:
        return None
    point = float(np.percentile(np.concatenate(a), q)) / denominator
    rng = np.random.default_rng(seed)
    sa, sb = _two_stage_percentiles(a, q, resamples, rng), _two_stage_percentiles(b, q, resamples, rng)
    return _ratio_interval(sa, sb, point, int(min(len(a), len(b))), level)


def _ratio_interval(resampled: NDArray[np.float64], resampled_reference: NDArray[np.float64], point: float,
                    n: int, level: float) -> Estimate | None:
    """The percentile interval of ``resampled / resampled_reference``, always holding ``point``;
    None when every resampled reference statistic was 0."""
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = resampled / resampled_reference
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return None
    alpha = (1.0 - level) / 2.0
    low, high = (float(x) for x in np.quantile(ratios, [alpha, 1.0 - alpha], method="inverted_cdf"))
    return Estimate(n, point, min(low, point), max(high, point), level)


def _two_stage_percentiles(groups: list[NDArray[np.float64]], q: float, resamples: int,
                           rng: np.random.Generator) -> NDArray[np.float64]:
    """``resamples`` percentiles, each of the values of groups drawn with replacement and values
    drawn with replacement within each drawn group."""
    import numpy as np

    sizes = {g.size for g in groups}
    if len(sizes) == 1:  # the usual case (every process made the same number of calls): vectorised
        table, size = np.stack(groups), sizes.pop()
        drawn = rng.integers(0, len(groups), size=(resamples, len(groups)))
        within = rng.integers(0, size, size=(resamples, len(groups), size))
        return np.percentile(table[drawn[:, :, None], within].reshape(resamples, -1), q, axis=1)
    out = np.empty(resamples, dtype=np.float64)
    for i in range(resamples):
        drawn = rng.integers(0, len(groups), size=len(groups))
        values = [g[rng.integers(0, g.size, size=g.size)] for g in (groups[j] for j in drawn)]
        out[i] = np.percentile(np.concatenate(values), q)
    return out
