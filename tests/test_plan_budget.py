"""``bench --budget`` on CPU: plan first; the reference (bf16) is predicted over the budget, so it runs
with the lightest offload that fits (group offload to disk); a recipe predicted over the budget
becomes a refused row with the reason; the others run and are scored against the offloaded reference."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from diffquant.cli import main
from diffquant.errors import DiffquantError
from diffquant.plan.fit import fit_sweep

MIB = 2**20
OFFLOADED = "bf16+offload-group-leaf(disk)"
FITS, TOO_BIG = "gguf-q8_0", "fp8-layerwise"


def _needs() -> dict[str, int]:
    return fit_sweep("zoo:tiny-flux", "bf16", [FITS, TOO_BIG], 2**60, device="cpu").predicted_bytes


@pytest.mark.slow  # three worker processes and scoring: ~1 min on an idle machine
def test_budget_between_offloaded_and_full_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need = _needs()
    low, high = max(need[OFFLOADED], need[FITS]), min(need["bf16"], need[TOO_BIG])
    assert low < high, need  # the plan orders them so; otherwise this test cannot choose a budget
    budget = (low + high) // 2
    db = tmp_path / "results.db"
    code = main(["bench", "zoo:tiny-flux", "--recipes", f"{FITS},{TOO_BIG}", "--budget", str(budget),
                 "--db", str(db), "--steps", "2", "--size", "64x64", "--prompt", "a red circle",
                 "--repeats", "1", "--device", "cpu", "--no-quant-cache"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"runs as {OFFLOADED}" in out
    con = sqlite3.connect(db)
    rows = dict(con.execute("SELECT recipe, status FROM runs").fetchall())
    assert rows == {OFFLOADED: "ok", FITS: "ok", TOO_BIG: "error"}
    error = con.execute("SELECT error FROM runs WHERE recipe = ?", (TOO_BIG,)).fetchone()[0]
    assert "over the --budget" in error and "predicted" in error
    scored = con.execute("SELECT q.reference_recipe, q.status FROM quality_run q JOIN runs r ON r.id = q.run_id "
                         "WHERE r.recipe = ? AND q.metric = 'psnr'", (FITS,)).fetchone()
    assert scored == (OFFLOADED, "ok")


def test_reference_that_never_fits_is_a_clear_error() -> None:
    with pytest.raises(DiffquantError, match="does not fit .* even with offload"):
        fit_sweep("zoo:tiny-flux", "bf16", [FITS], 10 * MIB, device="cpu")


def test_generous_budget_changes_nothing() -> None:
    fit = fit_sweep("zoo:tiny-flux", "bf16", [FITS, TOO_BIG], 2**40, device="cpu")
    assert fit.reference == "bf16" and fit.reference_note is None and not fit.refused
