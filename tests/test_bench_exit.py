"""`diffquant bench`'s exit status tells the truth: 0 when every run succeeded or was refused before
starting (this machine cannot run it), 1 when any crashed, timed out or failed. One real bf16 run
on zoo:tiny-flux; the other cases reuse its database and fail on purpose before importing torch
(the fault injection of tests/test_bench_isolation.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

import diffquant.bench as bench_pkg
from diffquant.bench import SweepOptions
from diffquant.cli import main
from diffquant.store import ResultsDB

TINY = ["--prompt", "a red circle", "--seeds", "0", "--steps", "2", "--size", "64", "--repeats", "1",
        "--device", "cpu", "--no-report", "--format", "json"]


def bench(db: Path, recipes: str, *extra: str) -> int:
    return main(["bench", "zoo:tiny-flux", "--recipes", recipes, "--db", str(db), *TINY, *extra])


def inject(monkeypatch: pytest.MonkeyPatch, faults: dict[str, str]) -> None:
    """The CLI has no fault flag: hand the sweep its test-only faults through SweepOptions."""
    def with_faults(**kwargs: Any) -> SweepOptions:
        return SweepOptions(**kwargs, faults=faults)

    monkeypatch.setattr(bench_pkg, "SweepOptions", with_faults)


@pytest.fixture(scope="module")
def ok_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("exit") / "ok.db"
    assert bench(db, "bf16") == 0  # all ok (the reference is the only run)
    return db


def copy_db(ok_db: Path, tmp_path: Path) -> Path:
    db = tmp_path / "r.db"
    shutil.copy(ok_db, db)
    return db


def outcomes(db: Path) -> dict[str, str]:
    with ResultsDB(db) as store:
        return {r.recipe: r.metrics.get("run.outcome", r.status) for r in store.runs()}


def test_all_ok_exits_0(ok_db: Path) -> None:
    assert outcomes(ok_db) == {"bf16": "ok"}


def test_one_crash_exits_1(ok_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    db = copy_db(ok_db, tmp_path)
    inject(monkeypatch, {"quanto-int8": "abort"})
    assert bench(db, "quanto-int8") == 1
    assert outcomes(db) == {"bf16": "ok", "quanto-int8": "crashed"}
    assert "1 of 2 runs failed: quanto-int8 (crashed); exit status 1" in capsys.readouterr().err


def test_one_timeout_exits_1(ok_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = copy_db(ok_db, tmp_path)
    inject(monkeypatch, {"torchao-int8wo": "hang"})
    assert bench(db, "torchao-int8wo", "--timeout", "3") == 1
    assert outcomes(db)["torchao-int8wo"] == "timeout"


def test_a_failed_run_kept_from_an_earlier_sweep_still_counts(ok_db: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    db = copy_db(ok_db, tmp_path)
    inject(monkeypatch, {"quanto-int8": "raise"})
    assert bench(db, "quanto-int8") == 1
    monkeypatch.undo()
    assert bench(db, "quanto-int8") == 1  # skipped (already recorded), still failed
    assert outcomes(db)["quanto-int8"] == "failed"


def test_all_refused_exits_0(tmp_path: Path) -> None:
    # Nothing here can run on a CPU: refused before any worker starts, which is not a failure.
    db = tmp_path / "r.db"
    assert bench(db, "torchao-int4wo,torchao-fp8dq", "--reference", "bf16+offload-model") == 0
    assert set(outcomes(db).values()) == {"unavailable"}


def test_an_invalid_recipe_exits_1(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    assert bench(db, "torchao-int4wo,bnb-nf5", "--reference", "bf16+offload-model") == 1
    assert outcomes(db)["bnb-nf5"] == "invalid"
