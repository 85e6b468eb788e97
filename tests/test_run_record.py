"""One run record: the worker gets the recipe as data (dict + hash), hands the hash back, and the
parent files a run whose hash does not match as a failed row. Stand-in workers: no torch, fast."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from diffquant.bench import BenchSettings, RunSpec, SweepOptions, run_sweep
from diffquant.bench.worker import received_recipe
from diffquant.errors import DiffquantError
from diffquant.recipes import parse_recipe
from diffquant.store import ResultsDB

SETTINGS = BenchSettings(prompts=("a red circle",), seeds=(0,), steps=2, height=64, width=64, device="cpu",
                         repeats=1)
MODEL = "zoo:tiny-flux"
RECIPE = "bnb-nf4(double_quant)@transformer+offload-group-leaf"


def _spec(tmp_path: Path, recipe: str = RECIPE) -> RunSpec:
    return RunSpec.build(MODEL, recipe, SETTINGS, result_path=tmp_path / "r.json", image_dir=tmp_path / "img")


def test_spec_carries_the_recipe_as_data(tmp_path: Path) -> None:
    recipe = parse_recipe(RECIPE)
    spec = RunSpec.from_json(_spec(tmp_path).to_json())  # as the worker reads it
    assert spec.recipe_dict == recipe.to_dict() and spec.recipe_hash == recipe.hash
    assert received_recipe(spec) == recipe


def test_worker_rebuilds_from_the_dict_not_the_string(tmp_path: Path) -> None:
    # The string says bf16; the data says bnb-nf4: the data wins (the string is only a label).
    spec = replace(_spec(tmp_path), recipe="bf16")
    assert received_recipe(spec) == parse_recipe(RECIPE)


def test_worker_refuses_a_dict_that_does_not_match_its_hash(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    spec.recipe_dict["memory"]["offload"] = "model"  # type: ignore[index]
    with pytest.raises(DiffquantError, match="hashes to"):
        received_recipe(spec)


_ECHO_WORKER = """
import json, sys
spec = json.load(open(sys.argv[1]))
result = {"status": "ok", "error": None, "images": [], "env": {"fake": True}, "metrics": {},
          "recipe": spec["recipe"], "recipe_hash": HASH}
open(spec["result_path"], "w").write(json.dumps(result))
"""


def _sweep(tmp_path: Path, hash_expr: str) -> tuple[int, dict[str, object]]:
    fake = tmp_path / "fake_worker.py"
    fake.write_text(_ECHO_WORKER.replace("HASH", hash_expr))
    options = SweepOptions(model=MODEL, recipes=["bf16+vae-tiling"], settings=SETTINGS,
                           db_path=tmp_path / "r.db", worker_argv=[sys.executable, str(fake)])
    report = run_sweep(options)
    with ResultsDB(tmp_path / "r.db") as db:
        rows = {r.recipe: r for r in db.runs()}
    return report.exit_status, rows


def test_matching_hash_is_recorded_ok(tmp_path: Path) -> None:
    status, rows = _sweep(tmp_path, 'spec["recipe_hash"]')
    assert status == 0
    assert all(r.ok for r in rows.values()), {k: r.error for k, r in rows.items()}  # type: ignore[attr-defined]


def test_mismatched_hash_is_a_failed_row(tmp_path: Path) -> None:
    status, rows = _sweep(tmp_path, json.dumps("0123456789abcdef"))
    assert status == 1
    row = rows["bf16+vae-tiling"]
    assert not row.ok and row.metrics["run.outcome"] == "recipe-mismatch"  # type: ignore[attr-defined]
    assert "0123456789abcdef" in row.error and parse_recipe("bf16+vae-tiling").hash in row.error  # type: ignore[attr-defined]
