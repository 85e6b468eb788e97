"""Per-recipe detection from the stored votes, and its correlation with PSNR; as rows for the
app, ``diffquant results``, the HTML report, CSV and JSON. No gradio, no torch.

A pairwise vote counts for the quantized recipe it showed (chance 1/2). A grid vote counts for
the grid as a whole, labelled by the recipes it held (chance 1/(N+1)).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffquant.arena.stats import Detection, detection, format_p, pearson, spearman, votes

CSV_FIELDS = ("sweep_id", "mode", "label", "n", "correct", "rate", "ci_low", "ci_high", "chance", "p_value",
              "verdict", "votes_needed", "median_time_s", "psnr", "summary")


@dataclass(frozen=True)
class Correlation:
    sweep_id: str
    recipes: int  # recipes with both a detection rate and a finite PSNR (Pearson)
    pearson: float | None
    spearman: float | None

    @property
    def text(self) -> str:
        if self.pearson is None and self.spearman is None:
            return f"not enough recipes with votes and a PSNR score ({self.recipes}; needs 3)"
        parts = []
        if self.pearson is not None:
            parts.append(f"Pearson r = {self.pearson:+.2f}")
        if self.spearman is not None:
            parts.append(f"Spearman ρ = {self.spearman:+.2f}")
        return f"{', '.join(parts)} over {self.recipes} recipes (negative: lower PSNR, easier to spot)"


@dataclass
class ArenaSummary:
    votes: int
    sessions: int
    rows: list[Detection] = field(default_factory=list)
    psnr: dict[int, float] = field(default_factory=dict)  # run id -> PSNR mean (dB), where scored
    correlations: list[Correlation] = field(default_factory=list)

    def psnr_of(self, row: Detection) -> float | None:
        if row.mode != "pairwise" or len(row.run_ids) != 1:
            return None
        return self.psnr.get(row.run_ids[0])

    def records(self) -> list[dict[str, Any]]:
        out = []
        for row in self.rows:
            record = row.as_dict()
            psnr = self.psnr_of(row)
            record["psnr"] = None if psnr is None or not math.isfinite(psnr) else psnr
            out.append(record)
        return out

    def to_json(self) -> str:
        payload = {"votes": self.votes, "sessions": self.sessions, "detection": self.records(),
                   "correlation_with_psnr": [c.__dict__ | {"text": c.text} for c in self.correlations]}
        return json.dumps(payload, indent=1, sort_keys=True, allow_nan=False) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for record in self.records():
            writer.writerow({k: ("" if record.get(k) is None else record.get(k)) for k in CSV_FIELDS})
        return buf.getvalue()


def has_arena_tables(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'arena_votes'"
                        ).fetchone() is not None


def summarize(conn: sqlite3.Connection) -> ArenaSummary:
    """Detection per recipe (pairwise) and per grid, from every vote in the database."""
    if not has_arena_tables(conn):
        return ArenaSummary(0, 0)
    runs = {int(r[0]): (str(r[1]), str(r[2])) for r in conn.execute("SELECT id, recipe, sweep_id FROM runs")}
    vote_rows = conn.execute("SELECT v.round_id, v.correct, v.time_s, r.mode, r.slots, r.reference_run_id "
                         "FROM arena_votes v JOIN arena_rounds r ON r.id = v.round_id ORDER BY v.round_id").fetchall()
    shown: dict[int, list[int]] = {}
    for round_id, run_id in conn.execute("SELECT i.round_id, i.run_id FROM arena_round_images i "
                                         "JOIN arena_votes v ON v.round_id = i.round_id ORDER BY i.round_id, i.slot"):
        shown.setdefault(int(round_id), []).append(int(run_id))
    sessions = int(conn.execute("SELECT COUNT(DISTINCT session_id) FROM arena_votes").fetchone()[0])
    groups: dict[tuple[str, str, tuple[int, ...]], list[tuple[int, float, int]]] = {}
    for round_id, correct, time_s, mode, slots, ref_run in vote_rows:
        others = tuple(sorted(r for r in shown.get(int(round_id), []) if r != int(ref_run)))
        if not others:
            continue
        sweep = runs.get(others[0], ("?", "?"))[1]
        groups.setdefault((sweep, str(mode), others), []).append((int(correct), float(time_s), int(slots)))
    rows = []
    for (sweep, mode, run_ids), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "pairwise",
                                                                                  _label(kv[0][2], runs))):
        slots = max(m[2] for m in members)
        rows.append(detection(sum(m[0] for m in members), len(members), 1.0 / slots, label=_label(run_ids, runs),
                              mode=mode, sweep_id=sweep, run_ids=run_ids,
                              median_time_s=statistics.median(m[1] for m in members)))
    summary = ArenaSummary(len(vote_rows), sessions, rows, _psnr(conn))
    summary.correlations = _correlations(summary)
    return summary


def _label(run_ids: Sequence[int], runs: dict[int, tuple[str, str]]) -> str:
    names = [runs.get(r, (f"run {r}", ""))[0] for r in run_ids]
    return names[0] if len(names) == 1 else "grid: " + " · ".join(names)


def _psnr(conn: sqlite3.Connection) -> dict[int, float]:
    from diffquant.quality.store import has_quality_tables

    if not has_quality_tables(conn):
        return {}
    return {int(r[0]): float(r[1]) for r in conn.execute(
        "SELECT run_id, mean FROM quality_run WHERE metric = 'psnr' AND status = 'ok' AND mean IS NOT NULL")}


def _correlations(summary: ArenaSummary) -> list[Correlation]:
    by_sweep: dict[str, list[tuple[float, float]]] = {}
    for row in summary.rows:
        psnr = summary.psnr_of(row)
        if psnr is not None and row.rate is not None:
            by_sweep.setdefault(row.sweep_id, []).append((row.rate, psnr))
    out = []
    for sweep, points in by_sweep.items():
        finite = [(d, p) for d, p in points if math.isfinite(p)]
        ranked = [(d, p if math.isfinite(p) else 1e308) for d, p in points]  # identical images rank highest
        out.append(Correlation(sweep, len(finite), pearson([d for d, _ in finite], [p for _, p in finite]),
                               spearman([d for d, _ in ranked], [p for _, p in ranked])))
    return out


def read_summary(db_path: Path) -> ArenaSummary:
    """The summary of the votes in ``db_path`` (which must exist)."""
    from diffquant.quality.store import open_existing

    with open_existing(Path(db_path)) as db:
        return summarize(db.connection)


def table_rows(summary: ArenaSummary) -> tuple[list[str], list[list[str]]]:
    """Headers and cells for a text or HTML table."""
    headers = ["Sweep", "Shown", "Votes", "Spotted the original", "95% interval", "Chance", "p (exact, one-sided)",
               "Verdict", "Votes needed", "PSNR"]
    cells = []
    for row in summary.rows:
        psnr = summary.psnr_of(row)
        verdict = f"not distinguishable at {votes(row.n)}" if row.verdict == "not distinguishable" else row.verdict
        cells.append([row.sweep_id, row.label, str(row.n),
                      "-" if row.rate is None else f"{row.rate:.0%} ({row.correct}/{row.n})",
                      f"{row.ci_low:.0%}–{row.ci_high:.0%}", f"{row.chance:.0%}", format_p(row.p_value), verdict,
                      "-" if row.votes_needed is None else str(row.votes_needed),
                      "-" if psnr is None else ("∞" if math.isinf(psnr) else f"{psnr:.1f} dB")])
    return headers, cells


LEGEND = ("Spotted the original = share of votes that picked the unquantized reference; interval: Wilson 95%; "
          "p: exact binomial test against chance (1/2 in a pair, 1/(N+1) in a grid of N quantized images); "
          "votes needed: for a one-sided test at 0.05 with power 0.8, if the measured rate is the true one.")


def print_section(db_path: Path) -> None:
    """The ``diffquant results`` section: printed only when the database holds votes."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    summary = read_summary(db_path)
    if not summary.votes:
        return
    console = Console()
    headers, cells = table_rows(summary)
    table = Table(title=f"Blind test (diffquant arena): {summary.votes} votes from {summary.sessions} sessions")
    for i, header in enumerate(headers):
        table.add_column(escape(header), justify="right" if 2 <= i <= 6 or i >= 8 else "left", overflow="fold")
    for line in cells:
        table.add_row(*[escape(c) for c in line])
    console.print(table)
    for corr in summary.correlations:
        console.print(f"[dim]Detection vs PSNR in sweep {escape(corr.sweep_id)}: {escape(corr.text)}[/]")
    console.print(f"[dim]{escape(LEGEND)}[/]")


def report_sections(db_path: Path) -> dict[str, dict[str, Any]]:
    """The HTML report's "blind test" block per sweep id: rows and the correlation with PSNR."""
    summary = read_summary(db_path)
    if not summary.votes:
        return {}
    headers, cells = table_rows(summary)
    sections: dict[str, dict[str, Any]] = {}
    for row, line in zip(summary.rows, cells):
        section = sections.setdefault(row.sweep_id, {"headers": headers[1:], "rows": [], "votes": 0,
                                                     "correlation": None, "legend": LEGEND})
        section["rows"].append({"cells": line[1:], "verdict": row.verdict.replace(" ", "-"),
                                "rate": "" if row.rate is None else row.rate})
        section["votes"] += row.n
    for corr in summary.correlations:
        if corr.sweep_id in sections:
            sections[corr.sweep_id]["correlation"] = corr.text
    return sections
