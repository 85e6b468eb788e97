"""The results database's schema, as an ordered list of migrations.

``PRAGMA user_version`` holds the schema version. Opening a database applies every migration
above its version, each in its own transaction, so an old file is brought up to date in place
and a half-applied migration never stays behind. Never edit a released migration: append one.

Other modules keep their own tables in the same file (the quality module's ``quality_*``
tables); they create and migrate those themselves.
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
CREATE TABLE runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    run_key      TEXT NOT NULL UNIQUE,   -- model + recipe hash + device + settings: what makes a run 'the same'
    sweep_id     TEXT NOT NULL,          -- model + device + settings: runs that can be compared with each other
    model        TEXT NOT NULL,
    recipe       TEXT NOT NULL,          -- canonical recipe string (or the raw text, if it did not parse)
    recipe_hash  TEXT NOT NULL,
    settings     TEXT NOT NULL,          -- JSON
    status       TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    error        TEXT,
    metrics      TEXT NOT NULL,          -- JSON: {counter name: number | string | null}
    env          TEXT NOT NULL,          -- JSON
    started_at   TEXT NOT NULL,          -- ISO 8601, UTC
    finished_at  TEXT NOT NULL
);
CREATE INDEX runs_model ON runs (model);
CREATE INDEX runs_sweep ON runs (sweep_id);
CREATE TABLE images (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id        INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    prompt        TEXT NOT NULL,
    prompt_index  INTEGER NOT NULL,
    seed          INTEGER NOT NULL,
    path          TEXT NOT NULL,         -- absolute path of the PNG
    latents_path  TEXT,                  -- absolute path of the final latents (.safetensors)
    UNIQUE (run_id, prompt_index, seed)
);
CREATE INDEX images_run ON images (run_id);
"""),
    # The blind test (diffquant.arena): anonymous sessions, the rounds shown to them (which image in
    # which slot), and at most one vote per round (the primary key makes a replay impossible).
    (2, """
CREATE TABLE arena_sessions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash  TEXT NOT NULL UNIQUE,   -- sha256 of the session token the client holds
    created_at  TEXT NOT NULL
);
CREATE TABLE arena_rounds (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    token             TEXT NOT NULL UNIQUE,  -- secrets.token_urlsafe: the round's unguessable id
    session_id        INTEGER NOT NULL REFERENCES arena_sessions (id) ON DELETE CASCADE,
    mode              TEXT NOT NULL CHECK (mode IN ('pairwise', 'grid')),
    reference_run_id  INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    prompt            TEXT NOT NULL,
    prompt_index      INTEGER NOT NULL,
    seed              INTEGER NOT NULL,
    slots             INTEGER NOT NULL,      -- images shown
    answer_slot       INTEGER NOT NULL,      -- where the reference image was
    shown_at          REAL NOT NULL,         -- unix time the round was dealt
    created_at        TEXT NOT NULL
);
CREATE INDEX arena_rounds_session ON arena_rounds (session_id);
CREATE TABLE arena_round_images (
    round_id  INTEGER NOT NULL REFERENCES arena_rounds (id) ON DELETE CASCADE,
    slot      INTEGER NOT NULL,              -- 0-based position on screen
    image_id  INTEGER NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    run_id    INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    PRIMARY KEY (round_id, slot)
);
CREATE TABLE arena_votes (
    round_id    INTEGER PRIMARY KEY REFERENCES arena_rounds (id) ON DELETE CASCADE,
    session_id  INTEGER NOT NULL REFERENCES arena_sessions (id) ON DELETE CASCADE,
    choice      INTEGER NOT NULL,            -- the slot the voter called the original
    correct     INTEGER NOT NULL,
    time_s      REAL NOT NULL,               -- from dealing the round to the vote, server clock
    voted_at    TEXT NOT NULL
);
"""),
)

SCHEMA_VERSION = MIGRATIONS[-1][0]
