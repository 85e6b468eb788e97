"""The blind test's section in the HTML report: beside the quality table, with the correlation
between detection and PSNR over recipes; absent when nobody voted."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from diffquant.arena.sample import make_arena_db
from diffquant.arena.service import Arena, ArenaSettings
from diffquant.arena.summary import read_summary

# recipe -> (share of voters who spot it, its PSNR): the noisier, the easier to spot
SKILL = {"quanto-int8": (0.5, 42.0), "quanto-int4": (0.8, 25.0), "gguf-q4_0": (0.95, 18.0)}


def _store_psnr(db: Path, psnr: dict[int, float], reference_run: int) -> None:
    from diffquant.quality.store import ensure_schema

    with sqlite3.connect(db) as conn:
        ensure_schema(conn)
        for run_id, value in psnr.items():
            conn.execute("INSERT INTO quality_run (run_id, metric, status, reference_recipe, reference_run_id, "
                         "higher_is_better, needs_reference, unit, n, mean, ci_low, ci_high, scored_at) "
                         "VALUES (?, 'psnr', 'ok', 'bf16', ?, 1, 1, 'dB', 4, ?, ?, ?, '2026-01-01T00:00:00Z')",
                         (run_id, reference_run, value, value - 1, value + 1))


def _vote(arena: Arena, rounds: int, seed: int = 0) -> None:
    voter = random.Random(seed)
    session = arena.new_session()
    conn = arena.store._conn()
    for _ in range(rounds):
        dealt = arena.deal(session)
        answer, = conn.execute("SELECT answer_slot FROM arena_rounds WHERE token = ?", (dealt.round,)).fetchone()
        run_id, = conn.execute("SELECT run_id FROM arena_round_images i JOIN arena_rounds r ON r.id = i.round_id "
                               "WHERE r.token = ? AND slot != ?", (dealt.round, answer)).fetchone()
        right = voter.random() < SKILL[arena.pool.recipes[run_id]][0]
        arena.vote(session, dealt.round, answer if right else 1 - answer)


@pytest.fixture()
def voted(tmp_path: Path) -> Path:
    db = make_arena_db(tmp_path)
    arena = Arena(db, ArenaSettings(rate_per_s=1e6, burst=10**6), rng=random.Random(5))
    ids = {arena.pool.recipes[r]: r for r in arena.pool.run_ids}
    ref = next(r for r, name in arena.pool.recipes.items() if name == "bf16")
    _store_psnr(db, {ids[name]: psnr for name, (_, psnr) in SKILL.items()}, ref)
    _vote(arena, 150)
    return db


def test_detection_correlates_negatively_with_psnr(voted: Path) -> None:
    summary = read_summary(voted)
    corr = summary.correlations[0]
    assert corr.recipes == 3 and corr.pearson is not None and corr.pearson < -0.8, corr
    assert corr.spearman == pytest.approx(-1.0)
    assert {r.label: summary.psnr_of(r) for r in summary.rows} == {k: v[1] for k, v in SKILL.items()}


def test_report_has_the_blind_test_section(voted: Path, tmp_path: Path) -> None:
    from diffquant.report import write_report

    html = write_report(voted, tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "Blind test: did people spot the original?" in html
    assert "150 votes from <code>diffquant arena</code>" in html
    assert "Pearson r = -" in html and "Spearman" in html
    for name in SKILL:
        assert f"<td>{name}</td>" in html
    assert "verdict-detectable" in html  # gguf-q4_0, spotted 95% of the time
    # The section sits with the quality table, before the plots and images of the same sweep.
    assert html.index("Quality against") < html.index("Blind test:") < html.index("Recipes in detail")


def test_no_votes_no_section(tmp_path: Path) -> None:
    from diffquant.report import write_report

    html = write_report(make_arena_db(tmp_path), tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Blind test" not in html
