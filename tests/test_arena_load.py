"""Concurrent clients on loopback through the arena's HTTP API: every vote stored exactly once.
The full acceptance load (20 clients x 50 votes against the real `diffquant arena` process) is
marked slow; a small one against the API in a thread runs by default."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from scriptload import load_script

pytest.importorskip("fastapi", reason="the arena's API needs FastAPI (pip install 'diffquant[arena]')")
pytest.importorskip("httpx", reason="the load test's clients use httpx")

REPO = Path(__file__).resolve().parents[1]


def load_benchmark() -> ModuleType:
    return load_script("benchmarks/arena_load.py")


def _check(data: dict, clients: int, votes: int) -> None:
    assert data["votes_sent"] == clients * votes
    assert data["votes_ok"] == clients * votes, data
    assert data["votes_stored"] == clients * votes, data  # none lost
    assert data["duplicates"] == 0, data  # none twice
    assert 0 < data["vote_latency_ms"]["p50"] <= data["vote_latency_ms"]["p95"] <= data["vote_latency_ms"]["max"]


def test_small_load_in_process(tmp_path: Path) -> None:
    from diffquant.arena.sample import make_arena_db

    bench = load_benchmark()
    data = bench.run_load(make_arena_db(tmp_path), clients=4, votes=10, api_only=True)
    _check(data, 4, 10)


@pytest.mark.slow
def test_acceptance_load_20_clients_x_50_votes(tmp_path: Path) -> None:
    pytest.importorskip("gradio", reason="the full app needs Gradio (pip install 'diffquant[arena]')")
    from diffquant.arena.sample import make_arena_db

    bench = load_benchmark()
    data = bench.run_load(make_arena_db(tmp_path), clients=20, votes=50)
    _check(data, 20, 50)


def test_percentile_and_render() -> None:
    bench = load_benchmark()
    values = [float(v) for v in range(1, 101)]
    assert bench.percentile(values, 95) == 95.0 and bench.percentile(values, 50) == 50.0
    assert bench.percentile([3.0], 95) == 3.0
    data = {"machine": {"date": "d", "cpus": 2, "load_average_1m": 0.1}, "server": "s", "images_fetched": True,
            "clients": 20, "votes_per_client": 50, "votes_stored": 1000, "votes_sent": 1000, "duplicates": 0,
            "wall_s": 12.0, "vote_latency_ms": {"p50": 10, "p95": 42.4, "p99": 60}, "round_latency_ms": {"p95": 50}}
    text = bench.render(data)
    assert "| 20 × 50 | 1000 of 1000 | 0 | 12.0 s | 10 ms | 42 ms | 60 ms | 50 ms |" in text
