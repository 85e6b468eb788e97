"""Load test of the arena's HTTP API on loopback: N concurrent clients, each with its own session,
each dealing a round, fetching its images (as a browser would) and voting, M times.

    python benchmarks/arena_load.py                         # 20 clients x 50 votes, writes docs/arena-load.json
    python benchmarks/arena_load.py --clients 4 --votes 10 --out /tmp/x.json
    python benchmarks/arena_load.py --render                # docs/arena.md's table, from docs/arena-load.json

The server is the real one (`diffquant arena`, Gradio page included) in its own process, on a
synthetic sweep (``diffquant.arena.sample``) unless --db names a results database (it then gets
the votes). Afterwards the votes stored are counted: exactly clients x votes, one per round, or
the run fails. Latency is the client's wall time of each request (perf_counter around the call).
Run it on an idle machine: on a loaded one the server and the clients fight for the same cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "docs" / "arena-load.json"
DOC = REPO / "docs" / "arena.md"
BEGIN, END = "<!-- arena-load:begin -->", "<!-- arena-load:end -->"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 100)))  # ceil(q/100 * n)
    return ordered[min(rank, len(ordered)) - 1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(db: Path, port: int, *, api_only: bool = False) -> tuple[Any, str]:
    """The arena in a child process (``diffquant arena``), or only its API in a thread."""
    base = f"http://127.0.0.1:{port}"
    if api_only:
        import uvicorn

        from diffquant.arena.api import create_api
        from diffquant.arena.service import Arena, ArenaSettings

        arena = Arena(db, ArenaSettings(rate_per_s=1e6, burst=10**6))
        server = uvicorn.Server(uvicorn.Config(create_api(arena), host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        handle: Any = server
    else:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
        handle = subprocess.Popen([sys.executable, "-m", "diffquant.cli", "arena", "--db", str(db), "--port",
                                   str(port), "--rate", "1000000"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
    wait_ready(base, handle)
    return handle, base


def wait_ready(base: str, handle: Any, timeout_s: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if isinstance(handle, subprocess.Popen) and handle.poll() is not None:
            raise RuntimeError(f"the arena server exited: {handle.stdout.read() if handle.stdout else ''}")
        try:
            if httpx.get(f"{base}/api/arena/stats", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the arena server did not answer within {timeout_s:.0f} s")


def stop_server(handle: Any) -> None:
    if isinstance(handle, subprocess.Popen):
        handle.terminate()
        try:
            handle.wait(timeout=20)
        except subprocess.TimeoutExpired:
            handle.kill()
            handle.wait()
    else:
        handle.should_exit = True


def client(base: str, votes: int, barrier: threading.Barrier, images: bool, out: dict[str, Any]) -> None:
    import httpx

    vote_s, round_s, statuses = [], [], []
    with httpx.Client(base_url=base, timeout=60.0) as http:
        token = http.post("/api/arena/session").json()["session"]
        headers = {"X-Arena-Session": token}
        barrier.wait()
        for _ in range(votes):
            start = time.perf_counter()
            dealt = http.post("/api/arena/round", headers=headers).json()
            round_s.append(time.perf_counter() - start)
            if images:
                for url in dealt["images"]:
                    http.get(url).raise_for_status()
            start = time.perf_counter()
            response = http.post("/api/arena/vote", headers=headers, json={"round": dealt["round"], "choice": 0})
            vote_s.append(time.perf_counter() - start)
            statuses.append(response.status_code)
    out.update(vote_s=vote_s, round_s=round_s, statuses=statuses)


def run_load(db: Path, clients: int = 20, votes: int = 50, *, images: bool = True,
             api_only: bool = False) -> dict[str, Any]:
    """Run the load and count what the database stored; returns the figures (see ``main``)."""
    with sqlite3.connect(db) as conn:
        has = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'arena_votes'").fetchone()
        before = conn.execute("SELECT COUNT(*) FROM arena_votes").fetchone()[0] if has else 0
    handle, base = start_server(db, free_port(), api_only=api_only)
    try:
        barrier = threading.Barrier(clients + 1)
        results: list[dict[str, Any]] = [{} for _ in range(clients)]
        threads = [threading.Thread(target=client, args=(base, votes, barrier, images, results[i]))
                   for i in range(clients)]
        for thread in threads:
            thread.start()
        barrier.wait()
        start = time.perf_counter()
        for thread in threads:
            thread.join()
        wall_s = time.perf_counter() - start
    finally:
        stop_server(handle)
    if any("vote_s" not in r for r in results):
        raise RuntimeError("a client failed (see its traceback above)")
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT COUNT(*) FROM arena_votes").fetchone()[0] - before
        distinct = conn.execute("SELECT COUNT(DISTINCT round_id) FROM arena_votes").fetchone()[0]
        total = conn.execute("SELECT COUNT(*) FROM arena_votes").fetchone()[0]
    vote_s = [v for r in results for v in r["vote_s"]]
    round_s = [v for r in results for v in r["round_s"]]
    ok = sum(s == 200 for r in results for s in r["statuses"])
    return {"clients": clients, "votes_per_client": votes, "images_fetched": images,
            "server": "api only, in-process" if api_only else "diffquant arena (Gradio app), own process",
            "votes_sent": clients * votes, "votes_ok": ok, "votes_stored": stored,
            "duplicates": total - distinct, "wall_s": round(wall_s, 3),
            "votes_per_s": round(len(vote_s) / wall_s, 1),
            "vote_latency_ms": {q: round(1000 * percentile(vote_s, float(q[1:])), 1) for q in ("p50", "p95", "p99")}
            | {"max": round(1000 * max(vote_s), 1)},
            "round_latency_ms": {q: round(1000 * percentile(round_s, float(q[1:])), 1) for q in ("p50", "p95")}}


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpus": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "load_average_1m": load[0]}


def render(data: dict[str, Any]) -> str:
    m, v, r = data["machine"], data["vote_latency_ms"], data["round_latency_ms"]
    note = data.get("note") or ""
    load = m.get("load_average_1m")
    load_text = "unknown" if load is None else f"{load:.1f}"
    return "\n".join([
        BEGIN,
        (f"Measured {m['date']} on {m['cpus']} CPUs (load average {load_text} at the start"
        f"{', ' + note if note else ''}); server: {data['server']}; each round's images fetched: "
        f"{'yes' if data['images_fetched'] else 'no'}. Data: `docs/arena-load.json`."),
        "",
        "<!-- table:arena_load source=docs/arena-load.json view=script script=benchmarks/arena_load.py -->",
        "| clients × votes | votes stored | duplicates | wall time | vote p50 | vote p95 | vote p99 | round p95 |",
        "|---|---|---|---|---|---|---|---|",
        (f"| {data['clients']} × {data['votes_per_client']} | {data['votes_stored']} of {data['votes_sent']} | "
        f"{data['duplicates']} | {data['wall_s']:.1f} s | {v['p50']:.0f} ms | {v['p95']:.0f} ms | {v['p99']:.0f} ms | "
        f"{r['p95']:.0f} ms |"),
        "<!-- /table -->",
        END])


def write_doc(data: dict[str, Any], doc: Path = DOC) -> None:
    text = doc.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    doc.write_text(text[:start] + render(data) + text[end:], encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--votes", type=int, default=50, help="votes per client")
    parser.add_argument("--db", type=Path, default=None, help="results database (default: a synthetic sweep)")
    parser.add_argument("--no-images", action="store_true", help="do not fetch each round's images")
    parser.add_argument("--note", default="", help="a remark stored with the figures, e.g. 'contended machine'")
    parser.add_argument("--out", type=Path, default=DATA, help=f"data file (default: {DATA.relative_to(REPO)})")
    parser.add_argument("--render", action="store_true", help="only rewrite docs/arena.md's table from --out")
    args = parser.parse_args()
    if args.render:
        write_doc(json.loads(args.out.read_text(encoding="utf-8")))
        print(f"{DOC} updated from {args.out}")
        return 0
    sys.path.insert(0, str(REPO / "src"))
    with tempfile.TemporaryDirectory(prefix="arena-load.") as tmp:
        db = args.db
        if db is None:
            from diffquant.arena.sample import make_arena_db

            db = make_arena_db(Path(tmp))
        info = machine()
        data = run_load(db, args.clients, args.votes, images=not args.no_images)
    data["machine"], data["note"] = info, args.note
    data["machine"]["load_average_1m_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(json.dumps(data, indent=1, sort_keys=True))
    if data["votes_stored"] != data["votes_sent"] or data["duplicates"]:
        print("FAIL: votes lost or duplicated", file=sys.stderr)
        return 1
    if args.out == DATA:
        write_doc(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
