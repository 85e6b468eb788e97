"""`diffquant bench --recipes` takes a recipe TOML file (a mix written by `diffquant sensitivity`)
as `generate --recipe` does: the sweep plans the file's recipe under its own name and hash. A path
that does not exist is refused as an invalid recipe (the negative control)."""

from __future__ import annotations

from pathlib import Path

from diffquant.bench import BenchSettings, SweepOptions
from diffquant.bench.sweep import plan_sweep
from diffquant.recipes import parse_recipe, recipe_to_toml
from diffquant.store import ResultsDB


def test_a_toml_path_is_planned_as_its_recipe(tmp_path: Path) -> None:
    mixed = parse_recipe("fp8-layerwise(skip=proj_out)")
    path = tmp_path / "mixed.toml"
    path.write_text(recipe_to_toml(mixed))
    missing = tmp_path / "absent.toml"
    options = SweepOptions(model="zoo:tiny-flux", recipes=[str(path), str(missing)],
                           settings=BenchSettings(prompts=("a red circle",), device="cpu"), db_path=tmp_path / "r.db")
    with ResultsDB(options.db_path) as db:
        planned = plan_sweep(options, db)
    by_text = {p.text: p for p in planned}
    from_file = by_text[str(path)]
    assert from_file.outcome_kind is None and from_file.problem is None
    assert (from_file.name, from_file.recipe_hash) == (mixed.name, mixed.hash)
    assert by_text[str(missing)].outcome_kind == "invalid" and "not found" in (by_text[str(missing)].problem or "")


def test_a_toml_recipe_is_checked_against_the_budget(tmp_path: Path) -> None:
    from diffquant.plan.fit import fit_sweep

    mixed = parse_recipe("fp8-layerwise(skip=proj_out)")
    path = tmp_path / "mixed.toml"
    path.write_text(recipe_to_toml(mixed))
    fit = fit_sweep("zoo:tiny-flux", "bf16", [str(path)], 2**40, device="cpu")
    assert mixed.name in fit.predicted_bytes  # planned, so --budget can refuse it
