"""Statistics of a blind test, in plain Python (no scipy): did people tell the original apart?

Each vote is a Bernoulli trial: "the voter picked the original". Under the null hypothesis that
nobody can tell, the chance of a right answer is 1/2 in a pair and 1/(N+1) in a grid of the
reference among N quantized images.

- :func:`wilson_interval` — the Wilson score interval (95% by default): good coverage at small n
  and near 0 or 1, where the normal "Wald" interval is wrong.
- :func:`binomial_sf` — the exact one-sided binomial test P(X >= k | n, p0), summed in log space so
  that thousands of votes neither overflow nor underflow.
- :func:`votes_needed` — how many votes a test at ``alpha`` (one-sided) needs to tell a true rate
  ``rate`` from ``chance`` with the given power (normal approximation of the binomial).
- :func:`detection` — all of it for one recipe, with a verdict in words.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

Z_95 = 1.959963984540054  # two-sided 95%: the Wilson interval
Z_ONE_SIDED_05 = 1.6448536269514722  # one-sided alpha = 0.05
Z_POWER_80 = 0.8416212335729143  # power 0.8
ALPHA = 0.05

DETECTABLE = "detectable"
NOT_DISTINGUISHABLE = "not distinguishable"
BELOW_CHANCE = "picked less often than chance"
BORDERLINE = "borderline"
NO_VOTES = "no votes"


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) when there are no trials."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _log_pmf(i: int, n: int, p: float) -> float:
    return (math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
            + i * math.log(p) + (n - i) * math.log1p(-p))


def binomial_sf(successes: int, n: int, p: float) -> float:
    """Exact one-sided p-value P(X >= successes) for X ~ Binomial(n, p)."""
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a probability must be between 0 and 1, got {p}")
    if successes == 0 or p == 1.0:
        return 1.0
    if p == 0.0:
        return 0.0
    logs = [_log_pmf(i, n, p) for i in range(successes, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def critical_successes(n: int, chance: float, alpha: float = ALPHA) -> int | None:
    """The fewest right answers out of ``n`` that the one-sided exact test calls significant."""
    lo, hi = 0, n + 1  # binomial_sf falls as k grows: bisect for the first k with sf < alpha
    while lo < hi:
        mid = (lo + hi) // 2
        if mid <= n and binomial_sf(mid, n, chance) >= alpha:
            lo = mid + 1
        else:
            hi = mid
    return lo if lo <= n else None


def exact_power(n: int, rate: float, chance: float, alpha: float = ALPHA) -> float:
    """Probability that ``n`` votes at true rate ``rate`` give a significant exact test."""
    k = critical_successes(n, chance, alpha)
    return 0.0 if k is None else binomial_sf(k, n, rate)


EXACT_UP_TO = 200  # above this the normal approximation is within a few votes, and exact search is slow


@functools.lru_cache(maxsize=4096)
def _votes_needed(rate: float, chance: float, power: float) -> int:
    spread = Z_ONE_SIDED_05 * math.sqrt(chance * (1 - chance)) + Z_POWER_80 * math.sqrt(rate * (1 - rate))
    approx = max(1, math.ceil((spread / (rate - chance)) ** 2))
    if approx > EXACT_UP_TO:
        return approx
    # The binomial is discrete: at small n the approximation promises more power than the exact test has.
    return next(n for n in range(1, 4 * EXACT_UP_TO + 1) if exact_power(n, rate, chance) >= power)


def votes_needed(rate: float, chance: float, power: float = 0.8) -> int | None:
    """Votes for the one-sided exact test at 0.05 to tell ``rate`` from ``chance`` with ``power``
    (0.8), if ``rate`` is the true rate: the smallest such n, searched exactly up to
    ``EXACT_UP_TO`` votes, from the normal approximation above. None when ``rate`` is at or
    below chance: no number of votes shows detection then.
    """
    if rate <= chance:
        return None
    if power != 0.8:
        raise ValueError("only power 0.8 is implemented (its z value is built in)")
    return _votes_needed(round(rate, 4), chance, power)


@dataclass(frozen=True)
class Detection:
    """How often voters picked the original among images of one recipe (or one grid of recipes)."""

    label: str  # the recipe (pairwise) or the recipes of a grid
    mode: str  # "pairwise" | "grid"
    chance: float
    n: int  # votes
    correct: int  # votes that picked the original
    rate: float | None
    ci_low: float
    ci_high: float
    p_value: float | None  # one-sided exact binomial, H0: rate = chance
    verdict: str
    votes_needed: int | None  # for a test at alpha 0.05 with power 0.8, at the measured rate
    sweep_id: str = ""
    run_ids: tuple[int, ...] = ()
    median_time_s: float | None = None

    @property
    def summary(self) -> str:
        """``detectable: 80% [71–87%] of 100 votes, p = 1e-09`` and the like."""
        if self.n == 0:
            return NO_VOTES
        text = f"{self.rate:.0%} [{self.ci_low:.0%}–{self.ci_high:.0%}] of {votes(self.n)}, chance {self.chance:.0%}"
        if self.verdict == NOT_DISTINGUISHABLE:
            return f"not distinguishable at {votes(self.n)}: {text}"
        return f"{self.verdict}: {text}, p = {format_p(self.p_value)}"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["run_ids"] = list(self.run_ids)
        out["summary"] = self.summary
        return out


def votes(n: int) -> str:
    return f"{n} vote" if n == 1 else f"{n} votes"


def format_p(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def detection(correct: int, n: int, chance: float, *, label: str = "", mode: str = "pairwise",
              sweep_id: str = "", run_ids: Sequence[int] = (), median_time_s: float | None = None) -> Detection:
    """The detection rate, its Wilson 95% interval, the exact test against chance and a verdict.

    Verdict: *detectable* when the interval lies above chance and the one-sided test rejects at
    0.05; *not distinguishable at n votes* when the interval holds chance; *picked less often
    than chance* when it lies below (the quantized image looked more "original"); *borderline*
    in the rare case where interval and test disagree.
    """
    low, high = wilson_interval(correct, n)
    if n == 0:
        return Detection(label, mode, chance, 0, 0, None, low, high, None, NO_VOTES, None, sweep_id,
                         tuple(run_ids), median_time_s)
    rate = correct / n
    p_value = binomial_sf(correct, n, chance)
    if low <= chance <= high:
        verdict = NOT_DISTINGUISHABLE
    elif high < chance:
        verdict = BELOW_CHANCE
    elif p_value < ALPHA:
        verdict = DETECTABLE
    else:
        verdict = BORDERLINE
    return Detection(label, mode, chance, n, correct, rate, low, high, p_value, verdict,
                     votes_needed(rate, chance), sweep_id, tuple(run_ids), median_time_s)


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson's r; None with fewer than 3 pairs or no spread."""
    if len(xs) != len(ys) or len(xs) < 3:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 0 or syy <= 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # ties share their mean rank
        i = j + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson on ranks, ties averaged)."""
    if len(xs) != len(ys) or len(xs) < 3:
        return None
    return pearson(_ranks(xs), _ranks(ys))
