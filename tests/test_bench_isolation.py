"""Isolation: a worker that aborts, is killed, segfaults, hangs or raises becomes an error row and
the sweep goes on; the parent blocks while it waits; an interrupted sweep leaves no partial row and
resumes without duplicates. Workers here fail on purpose before importing torch: fast."""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffquant.bench import BenchSettings, RunSpec, SweepOptions, run_sweep
from diffquant.bench.runner import run_worker
from diffquant.store import ResultsDB

SETTINGS = BenchSettings(prompts=("a red circle",), seeds=(0,), steps=2, height=64, width=64, device="cpu",
                         repeats=1)
MODEL = "zoo:tiny-flux"


def spec(tmp_path: Path, fault: str, recipe: str = "bf16") -> RunSpec:
    return RunSpec.build(MODEL, recipe, SETTINGS, result_path=tmp_path / "result.json",
                         image_dir=tmp_path / "images", fault=fault)


@pytest.mark.parametrize(("fault", "expected", "code"), [
    ("abort", "SIGABRT", -signal.SIGABRT),
    ("sigkill", "SIGKILL", -signal.SIGKILL),
    ("segfault", "SIGSEGV", -signal.SIGSEGV),
    ("exit", "exited with status 3", 3),
    ("raise", "RuntimeError: injected fault", 1),
])
def test_worker_deaths_become_errors(tmp_path: Path, fault: str, expected: str, code: int) -> None:
    outcome = run_worker(spec(tmp_path, fault), tmp_path / "w", timeout_s=60)
    assert outcome.status == "error" and outcome.returncode == code and not outcome.timed_out
    assert expected in (outcome.error or "")
    assert "injecting fault" in (outcome.error or "")  # the tail of the worker's log comes along
    assert outcome.metrics["run.returncode"] == code and outcome.metrics["run.wall_s"] > 0


def test_timeout_kills_the_worker_and_the_parent_blocks(tmp_path: Path) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    outcome = run_worker(spec(tmp_path, "hang"), tmp_path / "w", timeout_s=3)
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    assert outcome.status == "error" and outcome.timed_out
    assert "timed out after 3 s" in (outcome.error or "")
    assert 2.9 <= elapsed < 15
    parent_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert parent_cpu < 0.5, f"parent used {parent_cpu:.2f} s of CPU while waiting: a busy loop?"


def test_sweep_records_every_failure_and_goes_on(tmp_path: Path) -> None:
    db_path = tmp_path / "r.db"
    options = SweepOptions(
        model=MODEL, settings=SETTINGS, db_path=db_path, timeout_s=4,
        recipes=["nonsense-recipe", "bnb-nf4+offload-model", "quanto-int8", "quanto-int4", "torchao-int8wo"],
        faults={"bf16": "raise", "quanto-int8": "abort", "quanto-int4": "hang", "torchao-int8wo": "sigkill"})
    events: list[str] = []
    report = run_sweep(options, on_event=lambda kind, item, data: events.append(f"{kind}:{item.name}"))
    with ResultsDB(db_path) as db:
        runs = {r.recipe: r for r in db.runs()}
    assert list(runs) == ["bf16", "nonsense-recipe", "bnb-nf4+offload-model", "quanto-int8", "quanto-int4",
                          "torchao-int8wo"]  # the reference first, then the user's order
    assert all(r.status == "error" for r in runs.values())
    assert "injected fault" in runs["bf16"].error and runs["bf16"].metrics["run.outcome"] == "failed"
    assert "Unknown recipe token 'nonsense-recipe'" in runs["nonsense-recipe"].error
    assert runs["nonsense-recipe"].metrics["run.outcome"] == "invalid"
    assert "cannot run on cpu" in runs["bnb-nf4+offload-model"].error
    assert runs["bnb-nf4+offload-model"].metrics["run.outcome"] == "unavailable"
    assert "SIGABRT" in runs["quanto-int8"].error and runs["quanto-int8"].metrics["run.outcome"] == "crashed"
    assert "timed out" in runs["quanto-int4"].error and runs["quanto-int4"].metrics["run.outcome"] == "timeout"
    assert "SIGKILL" in runs["torchao-int8wo"].error
    assert all(r.env.get("packages") for r in runs.values())  # the parent's environment, at least
    assert "finish:torchao-int8wo" in events and len(report.failed) == 6
    assert not any((tmp_path / "images").rglob("*.png"))  # failed runs keep no files

    # Resume: nothing to do. --retry-errors re-runs failures (replacing, not duplicating, rows).
    again = run_sweep(options)
    assert len(again.skipped) == 6 and not again.ran
    retry = SweepOptions(**{**options.__dict__, "recipes": ["nonsense-recipe"], "retry_errors": True,
                            "faults": {"bf16": "exit"}})
    run_sweep(retry)
    with ResultsDB(db_path) as db:
        runs2 = db.runs()
    assert len(runs2) == 6
    assert "exited with status 3" in next(r for r in runs2 if r.recipe == "bf16").error


def test_reference_must_be_uncompiled(tmp_path: Path) -> None:
    from diffquant.errors import DiffquantError

    options = SweepOptions(model=MODEL, recipes=[], settings=SETTINGS, db_path=tmp_path / "r.db",
                           reference="bf16+compile")
    with pytest.raises(DiffquantError, match="uncompiled"):
        run_sweep(options)


_SWEEP_SCRIPT = """
import json, sys
from pathlib import Path
from diffquant.bench import BenchSettings, SweepOptions, run_sweep
settings = BenchSettings(prompts=("a red circle",), seeds=(0,), steps=2, height=64, width=64, device="cpu",
                         repeats=1)
run_sweep(SweepOptions(model="zoo:tiny-flux", recipes=["torchao-int8wo"], settings=settings,
                       db_path=Path(sys.argv[1]), timeout_s=120, faults=json.loads(sys.argv[2])))
"""


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_sweep_leaves_no_partial_row_and_resumes(tmp_path: Path, how: signal.Signals) -> None:
    db_path = tmp_path / "r.db"
    faults = {"bf16": "raise", "torchao-int8wo": "hang"}
    env = dict(os.environ, TMPDIR=str(tmp_path))  # a SIGKILLed sweep cannot remove its work folder
    proc = subprocess.Popen([sys.executable, "-c", _SWEEP_SCRIPT, str(db_path), json.dumps(faults)],
                            stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    worker = None
    while time.monotonic() < deadline:  # the test may poll; the code under test may not
        if db_path.exists():
            try:
                with sqlite3.connect(db_path) as conn:
                    rows = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            except sqlite3.OperationalError:
                rows = 0
            kids = _children(proc.pid)
            if rows == 1 and kids:
                worker = kids[0]
                break
        time.sleep(0.1)
    assert worker is not None, "the sweep never reached its second (hanging) run"
    time.sleep(0.5)
    proc.send_signal(how)
    proc.wait(timeout=30)
    for _ in range(50):
        if not _alive(worker):
            break
        time.sleep(0.1)
    assert not _alive(worker), "the worker outlived its sweep"
    with ResultsDB(db_path) as db:
        runs = db.runs()
        assert [r.recipe for r in runs] == ["bf16"]  # the interrupted run left nothing behind
        assert db.connection.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 0
    first_id = runs[0].id

    # Resume: the finished run is skipped, the interrupted one runs (failing fast on purpose here).
    subprocess.run([sys.executable, "-c", _SWEEP_SCRIPT, str(db_path), json.dumps({"torchao-int8wo": "raise"})],
                   check=True, capture_output=True, timeout=120)
    with ResultsDB(db_path) as db:
        runs = db.runs()
    assert [r.recipe for r in runs] == ["bf16", "torchao-int8wo"] and runs[0].id == first_id
    assert "injected fault" in runs[1].error


def test_worker_spec_round_trip(tmp_path: Path) -> None:
    s = spec(tmp_path, "abort")
    assert RunSpec.from_json(s.to_json()) == s
    with pytest.raises(ValueError, match="unknown run-spec fields"):
        RunSpec.from_json(json.dumps({**json.loads(s.to_json()), "bogus": 1}))
    assert os.path.basename(s.result_path) == "result.json"


_FAKE_WORKER = """
import json, os, sys
spec = json.load(open(sys.argv[1]))
result = {"status": "ok", "error": None, "images": [], "env": {"fake": True},
          "metrics": {"seen.inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}}
open(spec["result_path"], "w").write(json.dumps(result))
"""


def test_compiled_runs_start_with_a_cold_compile_cache(tmp_path: Path) -> None:
    fake = tmp_path / "fake_worker.py"
    fake.write_text(_FAKE_WORKER)
    options = SweepOptions(model=MODEL, recipes=["bf16+compile"], settings=SETTINGS, db_path=tmp_path / "r.db",
                           worker_argv=[sys.executable, str(fake)])
    run_sweep(options)
    with ResultsDB(tmp_path / "r.db") as db:
        runs = {r.recipe: r for r in db.runs()}
    assert runs["bf16"].ok and "compile.cache" not in runs["bf16"].metrics
    assert runs["bf16"].metrics["seen.inductor_cache"] == os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    compiled = runs["bf16+compile"].metrics
    assert compiled["compile.cache"] == "cold" and "diffquant-run-" in compiled["seen.inductor_cache"]
    warm = SweepOptions(**{**options.__dict__, "db_path": tmp_path / "w.db", "warm_compile_cache": True})
    run_sweep(warm)
    with ResultsDB(tmp_path / "w.db") as db:
        assert db.runs(recipe="bf16+compile")[0].metrics["compile.cache"] == "shared"
