"""Sessions, rounds and votes in the results database's ``arena_*`` tables (store migration 2).

The server answers requests on many threads: each thread keeps its own SQLite connection, the
file is switched to WAL (readers such as ``diffquant results`` never block a vote and a vote never
waits for them), and every write is one ``BEGIN IMMEDIATE`` transaction that first checks and
then writes, so a refused request leaves the database exactly as it was.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from diffquant.arena.errors import ArenaRefused

ROUND_TOKEN_BYTES = 16  # 22 URL-safe characters, 128 bits
SESSION_TOKEN_BYTES = 24


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RoundRecord:
    id: int
    token: str
    session_id: int
    mode: str
    reference_run_id: int
    prompt: str
    slots: int
    answer_slot: int
    shown_at: float


@dataclass(frozen=True)
class VoteResult:
    round_token: str
    choice: int
    answer_slot: int
    correct: bool
    time_s: float
    run_ids: tuple[int, ...]  # what each slot showed, in slot order


class ArenaStore:
    """The arena's tables in one results database file (migrated on open by ``ResultsDB``)."""

    def __init__(self, db_path: Path | str) -> None:
        from diffquant.store import ResultsDB

        with ResultsDB(db_path) as db:  # creates or migrates the schema, arena tables included
            self.path = Path(db.path)
            db.connection.execute("PRAGMA journal_mode = WAL")
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One immediate transaction: rolled back on any exception, refusals included."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- sessions ----------------------------------------------------------------------------
    def new_session(self) -> tuple[int, str]:
        token = secrets.token_urlsafe(SESSION_TOKEN_BYTES)
        with self._write() as conn:
            cur = conn.execute("INSERT INTO arena_sessions (token_hash, created_at) VALUES (?, ?)",
                               (token_hash(token), _now_iso()))
        return int(cur.lastrowid or 0), token

    def session_id(self, token: str) -> int | None:
        row = self._conn().execute("SELECT id FROM arena_sessions WHERE token_hash = ?",
                                   (token_hash(token),)).fetchone()
        return None if row is None else int(row[0])

    # -- rounds ------------------------------------------------------------------------------
    def new_round(self, session_id: int, mode: str, reference_run_id: int, prompt: str, prompt_index: int,
                  seed: int, shown: Sequence[tuple[int, int]], answer_slot: int) -> RoundRecord:
        """Record a dealt round; ``shown`` is (run_id, image_id) per slot in screen order."""
        token = secrets.token_urlsafe(ROUND_TOKEN_BYTES)
        shown_at = time.time()
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO arena_rounds (token, session_id, mode, reference_run_id, prompt, prompt_index, seed, "
                "slots, answer_slot, shown_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (token, session_id, mode, reference_run_id, prompt, prompt_index, seed, len(shown), answer_slot,
                 shown_at, _now_iso()))
            round_id = int(cur.lastrowid or 0)
            conn.executemany("INSERT INTO arena_round_images (round_id, slot, image_id, run_id) VALUES (?, ?, ?, ?)",
                             [(round_id, slot, image_id, run_id) for slot, (run_id, image_id) in enumerate(shown)])
        return RoundRecord(round_id, token, session_id, mode, reference_run_id, prompt, len(shown), answer_slot,
                           shown_at)

    def round_image(self, round_token: str, slot: int) -> tuple[int, str] | None:
        """(image id, stored path) of one slot of a round, or None."""
        row = self._conn().execute(
            "SELECT images.id, images.path FROM arena_rounds JOIN arena_round_images ON round_id = arena_rounds.id "
            "JOIN images ON images.id = arena_round_images.image_id WHERE arena_rounds.token = ? AND slot = ?",
            (round_token, slot)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    # -- votes -------------------------------------------------------------------------------
    def vote(self, session_id: int, round_token: str, choice: int) -> VoteResult:
        """Store one vote, or refuse (unknown round, another session's round, a replay, a choice
        out of range) with nothing written."""
        with self._write() as conn:
            row = conn.execute("SELECT id, session_id, slots, answer_slot, shown_at FROM arena_rounds WHERE token = ?",
                               (round_token,)).fetchone()
            if row is None:
                raise ArenaRefused("Unknown round: no round with this id was dealt.", 404,
                                   hint="ask for a new round (POST /api/arena/round) and vote on its id")
            if int(row["session_id"]) != session_id:
                raise ArenaRefused("This round was dealt to another session; a session votes only on its own "
                                   "rounds.", 403, hint="ask for a round of your own")
            if not 0 <= choice < int(row["slots"]):
                raise ArenaRefused(f"Choice {choice} is out of range: this round shows {row['slots']} images, "
                                   f"choices are 0..{int(row['slots']) - 1}.", 422)
            if conn.execute("SELECT 1 FROM arena_votes WHERE round_id = ?", (row["id"],)).fetchone():
                raise ArenaRefused("This round already has a vote; each round takes one.", 409,
                                   hint="ask for a new round")
            time_s = max(0.0, time.time() - float(row["shown_at"]))
            correct = choice == int(row["answer_slot"])
            conn.execute("INSERT INTO arena_votes (round_id, session_id, choice, correct, time_s, voted_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (row["id"], session_id, choice, int(correct), time_s,
                                                      _now_iso()))
            shown = conn.execute("SELECT run_id FROM arena_round_images WHERE round_id = ? ORDER BY slot",
                                 (row["id"],)).fetchall()
        return VoteResult(round_token, choice, int(row["answer_slot"]), correct, time_s,
                          tuple(int(r[0]) for r in shown))

    def counts(self) -> dict[str, int]:
        """Rows per arena table (the tests' "nothing changed" check)."""
        conn = self._conn()
        return {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
                for t in ("arena_sessions", "arena_rounds", "arena_round_images", "arena_votes")}
