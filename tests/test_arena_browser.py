"""The arena in a real browser (headless Chromium through Playwright): ten rounds played through
the Gradio page; the statistics on the page and in `diffquant results` follow the votes.
Skipped only when Chromium is not installed (Debian: ``apt-get install -y chromium``), or when
the arena's optional packages (gradio) or Playwright are missing."""

from __future__ import annotations

import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
ROUNDS = 10


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get update && apt-get install -y chromium)")
    pytest.importorskip("gradio", reason="the arena needs Gradio (pip install 'diffquant[arena]')")
    pytest.importorskip("playwright.sync_api", reason="the browser test drives Chromium through Playwright")
    import uvicorn

    from diffquant.arena.sample import make_arena_db
    from diffquant.arena.service import Arena, ArenaSettings
    from diffquant.arena.ui import create_app

    db = make_arena_db(tmp_path_factory.mktemp("arena"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    arena = Arena(db, ArenaSettings(mode=os.environ.get("DIFFQUANT_ARENA_MODE", "pairwise")))
    server = uvicorn.Server(uvicorn.Config(create_app(arena, port=port), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.started, "the arena server did not start"
    yield f"http://127.0.0.1:{port}/", db
    server.should_exit = True
    thread.join(timeout=10)


def results_text(db: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "diffquant.cli", "results", "--db", str(db)], capture_output=True,
                         text=True, check=True, timeout=120, env={**os.environ, "COLUMNS": "250"})
    return out.stdout


def test_ten_rounds_through_the_page(served: tuple[str, Path]) -> None:
    from playwright.sync_api import sync_playwright

    url, db = served
    assert "Blind test" not in results_text(db)
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
            page.wait_for_selector("#arena-images img", timeout=60_000)
            assert page.get_attribute("#arena-total", "data-votes") == "0"

            page.click("#arena-vote")  # no choice yet: told so, nothing stored
            page.wait_for_function("document.querySelector('#arena-feedback').innerText.includes('Pick an image')")
            seen_rounds = set()
            for i in range(1, ROUNDS + 1):
                page.wait_for_function("[...document.querySelectorAll('#arena-images img')].every("
                                       "im => im.complete && im.naturalWidth >= 256)", timeout=30_000)
                src = page.get_attribute("#arena-images img", "src") or ""
                assert re.fullmatch(r"/api/arena/rounds/[A-Za-z0-9_-]{22}/images/\d\.png", src), src
                seen_rounds.add(src.split("/")[4])
                page.get_by_label("AB"[i % 2], exact=True).check()
                page.click("#arena-vote")
                page.wait_for_function(f"document.querySelector('#arena-total')?.dataset.votes === '{i}'",
                                       timeout=30_000)
                assert f"of {i} right" in page.inner_text("#arena-feedback")
            assert len(seen_rounds) == ROUNDS  # a fresh round every time
            stats = page.inner_text("#arena-stats")
            feedback = page.inner_text("#arena-feedback")
            shot = os.environ.get("DIFFQUANT_ARENA_SCREENSHOT")
            if shot:
                page.screenshot(path=shot, full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    assert f"Results so far: {ROUNDS} votes from 1 sessions" in stats
    rows = [line.split("\t") for line in stats.splitlines() if line.startswith("sweep-a\t")]
    assert sum(int(row[2]) for row in rows) == ROUNDS, stats
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT COUNT(*), SUM(correct), MIN(time_s) FROM arena_votes").fetchone()
    assert stored[0] == ROUNDS and stored[2] > 0
    assert f"You: {stored[1]} of {ROUNDS} right" in feedback  # the page's tally is the database's
    text = results_text(db)
    assert f"Blind test (diffquant arena): {ROUNDS} votes from 1 sessions" in text
    assert sum(int(m) for m in re.findall(r"│ sweep-a\s+│ [^│]+│\s+(\d+) │", text)) == ROUNDS, text
