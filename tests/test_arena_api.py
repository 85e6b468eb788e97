"""The arena's HTTP API under hostile and malformed requests: each is refused with a clear message
and leaves the database byte-for-byte as it was. Plus the happy path, exports and the CLI."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from diffquant.arena.sample import make_arena_db

fastapi = pytest.importorskip("fastapi", reason="the arena's API needs FastAPI (pip install 'diffquant[arena]')")
from fastapi.testclient import TestClient

from diffquant.arena.api import MAX_BODY_BYTES, create_api
from diffquant.arena.service import Arena, ArenaSettings

H = "X-Arena-Session"


@pytest.fixture()
def arena(tmp_path: Path) -> Arena:
    return Arena(make_arena_db(tmp_path), ArenaSettings(rate_per_s=1000.0, burst=1000))


@pytest.fixture()
def client(arena: Arena) -> Iterator[TestClient]:
    with TestClient(create_api(arena)) as c:
        yield c


def dump(db: Path) -> list[str]:
    """Every row of every table (the arena's and the store's), in a stable order."""
    with sqlite3.connect(db) as conn:
        return list(conn.iterdump())


def session(client: TestClient) -> str:
    response = client.post("/api/arena/session")
    assert response.status_code == 200, response.text
    return response.json()["session"]


def deal(client: TestClient, token: str) -> dict:
    response = client.post("/api/arena/round", headers={H: token})
    assert response.status_code == 200, response.text
    return response.json()


def refused(response, status: int, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, (response.status_code, response.text)
    message = response.json()["error"]
    for word in words:
        assert word.lower() in message.lower(), message


def test_a_round_and_a_vote(arena: Arena, client: TestClient) -> None:
    from io import BytesIO

    from PIL import Image

    token = session(client)
    dealt = deal(client, token)
    assert dealt["choices"] == 2 and dealt["prompt"] and len(dealt["images"]) == 2
    for url in dealt["images"]:
        response = client.get(url)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert b"diffquant.recipe" not in response.content and b"tEXt" not in response.content  # metadata gone
        with Image.open(BytesIO(response.content)) as img:
            assert img.size == (384, 384)  # 48 px scaled 8x, nearest neighbour
    before = arena.store.counts()
    response = client.post("/api/arena/vote", headers={H: token}, json={"round": dealt["round"], "choice": 1})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["correct"] == (body["answer"] == 1) and "bf16" in body["shown"] and len(body["shown"]) == 2
    after = arena.store.counts()
    assert after["arena_votes"] == before["arena_votes"] + 1
    stats = client.get("/api/arena/stats").json()
    assert stats["votes"] == 1 and stats["detection"][0]["n"] == 1
    assert client.get("/api/arena/stats.csv").text.startswith("sweep_id,mode,label,n,correct,rate")


def test_the_round_json_names_no_recipe_and_no_path(client: TestClient) -> None:
    dealt = deal(client, session(client))
    text = json.dumps(dealt)
    for leak in ("bf16", "quanto", "gguf", "/images/quanto", "results.db", "p0_s0"):
        assert leak not in text, (leak, text)
    # The round id is long and random; two rounds never share one.
    other = deal(client, session(client))
    assert len(dealt["round"]) >= 22 and dealt["round"] != other["round"]


HOSTILE_IMAGE_URLS = (
    "/api/arena/rounds/{round}/images/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/arena/rounds/{round}/images/%2Fetc%2Fpasswd.png",
    "/api/arena/rounds/{round}/images/0.png%00.txt",
    "/api/arena/rounds/{round}/images/-1.png",
    "/api/arena/rounds/{round}/images/7.png",
    "/api/arena/rounds/{round}/images/1",
    "/api/arena/rounds/..%2F..%2F..%2Fetc%2Fpasswd/images/0.png",
    "/api/arena/rounds/%2Fetc%2Fpasswd/images/0.png",
    "/api/arena/rounds/../../../../etc/passwd",
    "/api/arena/rounds/aaaaaaaaaaaaaaaaaaaaaa/images/0.png",
    "/api/arena/images/1",
    "/api/arena/image?path=/etc/passwd",
)


@pytest.mark.parametrize("url", HOSTILE_IMAGE_URLS)
def test_a_path_in_an_image_id_is_refused(arena: Arena, client: TestClient, url: str) -> None:
    dealt = deal(client, session(client))
    before = dump(arena.store.path)
    response = client.get(url.format(round=dealt["round"]))
    assert response.status_code in (400, 404, 405, 422), (url, response.status_code)
    assert b"root:" not in response.content and response.headers.get("content-type") != "image/png"
    assert dump(arena.store.path) == before


def test_hostile_votes_are_refused_and_change_nothing(arena: Arena, client: TestClient) -> None:
    me, other = session(client), session(client)
    mine, theirs = deal(client, me), deal(client, other)
    voted = deal(client, me)
    ok = client.post("/api/arena/vote", headers={H: me}, json={"round": voted["round"], "choice": 0})
    assert ok.status_code == 200
    before = dump(arena.store.path)

    def vote(body: object, token: str | None = me, **kw: object):  # type: ignore[no-untyped-def]
        headers = {H: token} if token is not None else {}
        if isinstance(body, (bytes, str)):
            return client.post("/api/arena/vote", headers=headers, content=body, **kw)
        return client.post("/api/arena/vote", headers=headers, json=body, **kw)

    refused(vote({"round": theirs["round"], "choice": 0}), 403, "another session")
    refused(vote({"round": voted["round"], "choice": 1}), 409, "already has a vote")  # a replay
    refused(vote({"round": voted["round"], "choice": 0}), 409, "already has a vote")
    for choice in (-1, 2, 99, 2**70):
        refused(vote({"round": mine["round"], "choice": choice}), 422, "out of range")
    for choice in ("1", 1.0, 0.5, True, None, [0], {"slot": 0}):
        refused(vote({"round": mine["round"], "choice": choice}), 422, "integer")
    refused(vote({"round": "A" * 22, "choice": 0}), 404, "unknown round")
    for bad in ("../../etc/passwd", "/etc/passwd", "", "x" * 200, 12345, None):
        refused(vote({"round": bad, "choice": 0}), 400, "malformed round")
    refused(vote({"round": mine["round"], "choice": 0}, token=None), 401, "session")
    refused(vote({"round": mine["round"], "choice": 0}, token="B" * 32), 401, "unknown session")
    refused(vote({"round": mine["round"], "choice": 0}, token="../../etc"), 401, "malformed session")
    refused(vote(b"{not json"), 400, "not json")
    refused(vote(b"[1, 2]"), 400, "json object")
    huge = json.dumps({"round": mine["round"], "choice": 0, "pad": "x" * (4 * MAX_BODY_BYTES)})
    refused(vote(huge), 413, "too large")
    refused(vote(b"x" * (10 * 2**20)), 413, "too large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must count what streams in
        yield b'{"round": "' + mine["round"].encode() + b'", "choice": 0, "pad": "'
        for _ in range(64):
            yield b"x" * 4096
        yield b'"}'

    refused(client.post("/api/arena/vote", headers={H: me}, content=chunks()), 413, "too large")
    refused(client.post("/api/arena/round", headers={H: me, "Content-Length": str(10**9)}, content=b""), 413)
    assert dump(arena.store.path) == before
    # ... and the round that was refused so often still takes its one honest vote.
    assert vote({"round": mine["round"], "choice": 1}).status_code == 200


def test_rate_limit_per_session(tmp_path: Path) -> None:
    arena = Arena(make_arena_db(tmp_path), ArenaSettings(rate_per_s=0.001, burst=3))
    with TestClient(create_api(arena)) as client:
        me, other = session(client), session(client)
        dealt = [deal(client, me) for _ in range(3)]
        before = dump(arena.store.path)
        refused(client.post("/api/arena/round", headers={H: me}), 429, "too many")
        refused(client.post("/api/arena/vote", headers={H: me}, json={"round": dealt[0]["round"], "choice": 0}),
                429, "too many")
        assert dump(arena.store.path) == before
        assert client.post("/api/arena/round", headers={H: other}).status_code == 200  # others are not slowed


def test_sessions_are_stored_hashed_and_the_file_is_wal(arena: Arena, client: TestClient) -> None:
    token = session(client)
    assert not any(token in line for line in dump(arena.store.path))
    with sqlite3.connect(arena.store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # readers never block a vote


def test_unknown_mode_and_recipe_are_user_errors(tmp_path: Path) -> None:
    from diffquant.errors import DiffquantError

    db = make_arena_db(tmp_path)
    with pytest.raises(DiffquantError, match="arena mode"):
        Arena(db, ArenaSettings(mode="triangle"))
    with pytest.raises(DiffquantError, match="quanto-int5") as info:
        Arena(db, ArenaSettings(recipes=("quanto-int5",)))
    assert "quanto-int4" in str(info.value)  # the valid choices are listed
    with pytest.raises(DiffquantError, match="reference"):
        Arena(db, ArenaSettings(reference="fp32"))


def test_grid_mode_deals_the_reference_among_all(tmp_path: Path) -> None:
    arena = Arena(make_arena_db(tmp_path), ArenaSettings(mode="grid", rate_per_s=1000.0, burst=1000))
    with TestClient(create_api(arena)) as client:
        token = session(client)
        dealt = deal(client, token)
        assert dealt["choices"] == 4 and dealt["mode"] == "grid"
        body = client.post("/api/arena/vote", headers={H: token}, json={"round": dealt["round"], "choice": 3}).json()
        assert sorted(body["shown"]) == ["bf16", "gguf-q4_0", "quanto-int4", "quanto-int8"]
        row = client.get("/api/arena/stats").json()["detection"][0]
        assert row["mode"] == "grid" and row["chance"] == 0.25 and row["label"].startswith("grid: ")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}  # rich wraps table cells to the terminal's width
    return subprocess.run([sys.executable, "-m", "diffquant.cli", *args], capture_output=True, text=True,
                          check=False, env=env, timeout=120)


def test_results_and_stats_cli_show_the_votes(arena: Arena, client: TestClient, tmp_path: Path) -> None:
    db = str(arena.store.path)
    plain = _cli("results", "--db", db)
    assert plain.returncode == 0 and "Blind test" not in plain.stdout  # no votes, no section
    token = session(client)
    for _ in range(6):
        dealt = deal(client, token)
        client.post("/api/arena/vote", headers={H: token}, json={"round": dealt["round"], "choice": 0})
    out = _cli("results", "--db", db)
    assert out.returncode == 0, out.stderr
    assert "Blind test (diffquant arena): 6 votes from 1 sessions" in out.stdout
    assert "not distinguishable" in out.stdout
    stats = _cli("arena", "--db", db, "--stats", "--format", "json")
    assert stats.returncode == 0 and json.loads(stats.stdout)["votes"] == 6
    out_csv = tmp_path / "arena.csv"
    assert _cli("arena", "--db", db, "--stats", "--format", "csv", "-o", str(out_csv)).returncode == 0
    lines = out_csv.read_text().splitlines()
    assert lines[0].startswith("sweep_id,") and sum(int(line.split(",")[3]) for line in lines[1:]) == 6


def test_old_database_gains_the_arena_tables(tmp_path: Path) -> None:
    """A schema-1 file (before the arena) is migrated in place when opened."""
    from diffquant.store import SCHEMA_VERSION, ResultsDB
    from diffquant.store.schema import MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0][1] + "\nPRAGMA user_version = 1;")
    conn.close()
    with ResultsDB(path) as db:
        assert db.schema_version == SCHEMA_VERSION >= 2
        names = {r[0] for r in db.connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"arena_sessions", "arena_rounds", "arena_round_images", "arena_votes"} <= names


def test_cheap_imports() -> None:
    """`diffquant --help` and `diffquant results` never load Gradio or FastAPI."""
    probe = ("from diffquant.cli import build_parser\nbuild_parser().format_help()\n"
             "import diffquant.arena.summary, diffquant.arena.service, diffquant.commands.results\n"
             "import sys\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('gradio', 'fastapi', 'torch')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_loopback_by_default() -> None:
    from diffquant.arena.ui import is_loopback
    from diffquant.cli import build_parser

    args = build_parser().parse_args(["arena", "--db", "x.db"])
    assert args.host == "127.0.0.1" and is_loopback(args.host)
    assert is_loopback("localhost") and is_loopback("::1") and not is_loopback("0.0.0.0")


def test_gradio_routes_do_not_serve_the_sweep(arena: Arena, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the page mounted, Gradio's own file route reaches neither the images nor the database,
    even from the folder they live in, and its API lists none of the page's events."""
    pytest.importorskip("gradio", reason="the page needs Gradio (pip install 'diffquant[arena]')")
    from diffquant.arena.ui import create_app

    monkeypatch.chdir(arena.store.path.parent)
    image = next(iter(arena.image_files()))
    before = dump(arena.store.path)
    with TestClient(create_app(arena)) as client:
        for target in (str(image), str(image.relative_to(arena.store.path.parent)), str(arena.store.path),
                       "results.db", "/etc/passwd"):
            response = client.get(f"/gradio_api/file={target}")
            assert response.status_code in (403, 404), (target, response.status_code)
            assert response.headers.get("content-type") != "image/png"
        info = client.get("/gradio_api/info").json()
        assert not info.get("named_endpoints") and not info.get("unnamed_endpoints"), info
        assert client.get("/").status_code == 200
    assert dump(arena.store.path) == before
