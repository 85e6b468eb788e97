"""The arena's statistics: checked against values computed another way, and end to end with
simulated voters through the real service and database."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from diffquant.arena.stats import (
    BELOW_CHANCE,
    DETECTABLE,
    NOT_DISTINGUISHABLE,
    binomial_sf,
    detection,
    pearson,
    spearman,
    votes_needed,
    wilson_interval,
)


def _sf_direct(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def test_binomial_sf_is_exact() -> None:
    assert binomial_sf(8, 10, 0.5) == pytest.approx(56 / 1024, rel=1e-12)  # (45 + 10 + 1) / 2^10
    for k, n, p in ((0, 5, 0.5), (3, 7, 0.25), (17, 40, 0.2), (60, 100, 0.5), (100, 100, 0.5)):
        assert binomial_sf(k, n, p) == pytest.approx(_sf_direct(k, n, p), rel=1e-9)
    tiny = binomial_sf(4000, 5000, 0.5)  # far in the tail: no underflow to a wrong 0 or overflow
    assert 0.0 < tiny < 1e-300 or tiny == 0.0
    assert binomial_sf(2600, 5000, 0.5) == pytest.approx(0.002, rel=0.5)
    with pytest.raises(ValueError):
        binomial_sf(3, 2, 0.5)


def test_wilson_interval() -> None:
    low, high = wilson_interval(8, 10)  # textbook value: 0.490 – 0.943
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # Coverage: ~95% of intervals from simulated data hold the true rate (the Wald interval would not at n=20).
    rng = random.Random(3)
    hits = sum(lo <= 0.15 <= hi for lo, hi in (wilson_interval(sum(rng.random() < 0.15 for _ in range(20)), 20)
                                                 for _ in range(2000)))
    assert 0.92 < hits / 2000 < 0.99


def test_votes_needed_gives_the_promised_power() -> None:
    for rate, chance in ((0.8, 0.5), (0.6, 0.5), (0.45, 0.25)):
        n = votes_needed(rate, chance)
        assert n is not None
        power = _exact_power(n, rate, chance)
        assert power >= 0.8, (rate, chance, n, power)
        assert max(_exact_power(m, rate, chance) for m in range(1, n)) < 0.8  # the smallest such n
        assert _exact_power(max(1, n // 3), rate, chance) < 0.6
    assert votes_needed(0.5, 0.5) is None and votes_needed(0.3, 0.5) is None
    assert votes_needed(0.55, 0.5) > votes_needed(0.7, 0.5)
    assert votes_needed(0.52, 0.5) == pytest.approx(3860, rel=0.05)  # normal approximation range


def _exact_power(n: int, rate: float, chance: float) -> float:
    k = next(k for k in range(n + 2) if k > n or binomial_sf(k, n, chance) < 0.05)
    return 0.0 if k > n else binomial_sf(k, n, rate)


def test_verdicts() -> None:
    assert detection(80, 100, 0.5).verdict == DETECTABLE
    assert detection(55, 100, 0.5).verdict == NOT_DISTINGUISHABLE
    assert detection(20, 100, 0.5).verdict == BELOW_CHANCE
    assert detection(40, 100, 0.25).verdict == DETECTABLE  # a grid of 3: chance 1/4
    assert detection(45, 100, 0.5).verdict == NOT_DISTINGUISHABLE
    none = detection(0, 0, 0.5)
    assert none.rate is None and none.p_value is None and "no votes" in none.summary
    text = detection(55, 100, 0.5).summary
    assert text.startswith("not distinguishable at 100 votes") and "55%" in text


def test_correlations() -> None:
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2], [1, 2]) is None and pearson([1, 1, 1], [1, 2, 3]) is None
    assert spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(pearson([1, 2.5, 2.5, 4], [1, 2, 3, 4]))


def test_simulated_voters_through_the_database(tmp_path: Path) -> None:
    """Voters who spot X (quanto-int4) 80% of the time and Y (quanto-int8) at chance, 100 votes each,
    dealt and stored by the real service: X is reported detectable, Y not distinguishable."""
    from diffquant.arena.sample import make_arena_db
    from diffquant.arena.service import Arena, ArenaSettings
    from diffquant.arena.summary import read_summary

    db = make_arena_db(tmp_path)
    arena = Arena(db, ArenaSettings(recipes=("quanto-int4", "quanto-int8"), rate_per_s=1e6, burst=10**6),
                  rng=random.Random(0))
    skill = {"quanto-int4": 0.8, "quanto-int8": 0.5}
    voter = random.Random(1)
    session = arena.new_session()
    done = {name: 0 for name in skill}
    conn = arena.store._conn()
    while min(done.values()) < 100:
        dealt = arena.deal(session)
        answer, = conn.execute("SELECT answer_slot FROM arena_rounds WHERE token = ?", (dealt.round,)).fetchone()
        run_id, = conn.execute("SELECT run_id FROM arena_round_images WHERE round_id = (SELECT id FROM "
                               "arena_rounds WHERE token = ?) AND slot != ?", (dealt.round, answer)).fetchone()
        recipe = arena.pool.recipes[run_id]
        if done[recipe] == 100:
            continue  # dealt, never voted: does not count
        choice = answer if voter.random() < skill[recipe] else 1 - answer
        arena.vote(session, dealt.round, choice)
        done[recipe] += 1
    rows = {row.label: row for row in read_summary(db).rows}
    assert set(rows) == set(skill) and all(r.n == 100 for r in rows.values())
    x, y = rows["quanto-int4"], rows["quanto-int8"]
    assert x.verdict == DETECTABLE and x.ci_low > 0.5 and x.p_value < 1e-6, x
    assert y.verdict == NOT_DISTINGUISHABLE and y.ci_low <= 0.5 <= y.ci_high, y
    assert "not distinguishable at 100 votes" in y.summary
    assert x.votes_needed is not None and x.votes_needed < 100
