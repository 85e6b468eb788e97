"""In-context (leave-one-out) sensitivity: every group quantized, each promoted alone. Reproducible,
a no-op promotion gains nothing and is not kept, a broken layer's promotion tops the ranking, and
the mix made from it is an ordinary recipe that parses, plans and loads."""

from __future__ import annotations

import copy
import json
import math
import sqlite3
from pathlib import Path

import pytest

MODEL = "zoo:tiny-flux"
PROMPTS = ["a red square"]


def _sweep(recipe: str = "gguf-q2_k", **kwargs):
    from diffquant.sensitivity import measure_sensitivity

    settings = {"granularity": "kind", "calls_per_prompt": 1, "psnr_top": 1, "device": "cpu", "prompts": PROMPTS,
                "context": "uniform"}
    return measure_sensitivity(MODEL, recipe, **{**settings, **kwargs})


@pytest.fixture(scope="module")
def q2k():
    return _sweep()


def test_in_context_gains_are_reproducible(q2k) -> None:
    first, _ = q2k
    again, _ = _sweep(psnr_top=0, calibrate=False)
    assert first.context == again.context == "uniform" and first.settings["context"] == "uniform"
    # bit for bit (the end-image steps do not touch the proxy errors), so the same proxy ranking
    assert {g.name: g.rel_error for g in first.groups} == {g.name: g.rel_error for g in again.groups}
    assert [g.name for g in sorted(first.groups, key=lambda g: (-g.rel_error, g.name))] == \
        [g.name for g in again.groups]
    assert first.uniform_rel_error == again.uniform_rel_error > 0
    # promoting groups of Q2_K helps on balance, and one type up (Q3_K) leaves some of it
    assert sum(g.rel_error for g in first.groups) > 0
    assert sum(g.rel_error_upgrade for g in first.groups) > 0
    assert all(g.bytes_quant < g.bytes_upgrade < g.bytes_ref for g in first.groups)


def test_top_group_gain_is_measured_on_the_end_image(q2k) -> None:
    result, _ = q2k
    top = result.groups[0]
    assert result.uniform_image_mse and result.uniform_image_mse > 0
    # the measured gain is the uniform image MSE minus the promoted one, whose PSNR is recorded
    assert top.image_mse is not None and top.psnr_db is not None
    promoted = result.uniform_image_mse - top.image_mse
    assert promoted >= 0 and abs(top.psnr_db - 10 * math.log10(1 / promoted)) < 1e-9
    assert all(g.image_mse is None for g in result.groups[1:])


def _patched_bnb(monkeypatch, noop: str | None = None, broken: str | None = None) -> None:
    """bnb's quantizer, except that ``noop`` is "quantized" to an exact copy of itself (promoting
    it changes nothing) and ``broken`` to noise (promoting it removes a large error)."""
    import torch

    from diffquant.backends import bnb

    real = bnb.quantize_linear

    def patched(linear, spec, name, model):
        if name == noop:
            return copy.deepcopy(linear)
        layer = real(linear, spec, name, model)
        if name == broken:
            layer = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                    dtype=linear.weight.dtype)
            with torch.no_grad():
                noise = torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(0))
                layer.weight.copy_(noise * 10 * float(linear.weight.float().std()))
        return layer

    monkeypatch.setattr(bnb, "quantize_linear", patched)


NOOP = "transformer_blocks.0.attn.to_k"
BROKEN = "single_transformer_blocks.0.proj_out"


def test_a_no_op_promotion_gains_nothing_and_is_not_kept(monkeypatch) -> None:
    """Negative control: a layer whose "quantized" copy is itself: promoting it inside the
    uniform recipe removes exactly nothing, and the mix does not spend on it."""
    from diffquant.components import read_components, resolve_model
    from diffquant.recipes import parse_recipe
    from diffquant.sensitivity import mix_recipe

    _patched_bnb(monkeypatch, noop=NOOP)
    result, models = _sweep("bnb-nf4", granularity="layer", psnr_top=0, calibrate=False, text_encoders=False)
    gains = {g.name: g.rel_error for g in result.groups}
    assert gains[NOOP] == 0.0
    assert max(gains.values()) > 0 and sum(1 for v in gains.values() if v > 0) > len(gains) // 2
    assert sum(gains.values()) > 0  # on balance, promotions help (single ones can undo a cancellation)
    recipe = parse_recipe("bnb-nf4@transformer")
    _, choices, spent = mix_recipe(result, recipe, models, 10 * result.total_quant_bytes(),
                                   read_components(resolve_model(MODEL)))
    chosen = {c.group for c in choices}
    assert chosen and spent > 0 and NOOP not in chosen


def test_a_broken_layer_promotion_tops_the_ranking(monkeypatch) -> None:
    _patched_bnb(monkeypatch, broken=BROKEN)
    result, _ = _sweep("bnb-nf4", granularity="layer", psnr_top=0, calibrate=False, text_encoders=False)
    assert result.groups[0].name == BROKEN
    assert result.groups[0].rel_error > 3 * result.groups[1].rel_error > 0


def test_in_context_mix_is_an_ordinary_recipe(q2k, tmp_path: Path) -> None:
    from diffquant.components import read_components, resolve_model
    from diffquant.inspect import component_stats
    from diffquant.pipeline import load_pipeline
    from diffquant.plan import plan_model
    from diffquant.recipes import load_recipe, parse_recipe, recipe_to_toml
    from diffquant.sensitivity import mix_recipe

    result, models = q2k
    recipe = parse_recipe("gguf-q2_k")
    mixed, choices, spent = mix_recipe(result, recipe, models, int(0.3 * result.total_quant_bytes()),
                                       read_components(resolve_model(MODEL)))
    assert choices and 0 < spent <= int(0.3 * result.total_quant_bytes())
    # every chosen group is kept at its last rung's type by GGUF keep= rules
    rules = set(str(mixed.quant[0].option("keep")).split("|"))
    groups = {g.name: g for g in result.groups}
    final = {c.group: c.to_type for c in choices}
    for name, to_type in final.items():
        suffix = "" if to_type == "reference" else f"={to_type.upper()}"
        assert all(f"{m}.*{suffix}" in rules for m in groups[name].modules)
    path = tmp_path / "mixed.toml"
    path.write_text(recipe_to_toml(mixed))
    again = load_recipe(str(path))
    assert again == mixed and again.hash == mixed.hash
    plan = plan_model(MODEL, [recipe, mixed], device="cpu")
    uniform_plan, mixed_plan = plan.recipes
    assert mixed_plan.memory is not None and uniform_plan.memory is not None
    assert mixed_plan.memory.weights_bytes > uniform_plan.memory.weights_bytes
    uniform = component_stats(load_pipeline(MODEL, recipe, device="cpu"))["transformer"].weight_bytes
    bumped = component_stats(load_pipeline(MODEL, mixed, device="cpu"))["transformer"].weight_bytes
    assert bumped - uniform == spent


def test_cli_context_uniform_json_and_db(tmp_path: Path, capsys) -> None:
    from diffquant.cli import main

    db = tmp_path / "s.db"
    code = main(["sensitivity", MODEL, "--recipe", "gguf-q2_k", "--groups", "kind", "--calls", "1",
                 "--psnr-top", "0", "--device", "cpu", "--context", "uniform", "--db", str(db), "--format", "json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["context"] == "uniform" and data["settings"]["context"] == "uniform"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT context FROM sensitivity_run").fetchall() == [("uniform",)]
    assert main(["sensitivity", MODEL, "--recipe", "gguf-q2_k", "--device", "cpu", "--context", "unifrom"]) == 2
    assert "Did you mean: 'uniform'" in capsys.readouterr().err


def test_store_adds_the_context_column_to_an_older_database(tmp_path: Path) -> None:
    from diffquant.sensitivity.run import GroupResult, SensitivityResult
    from diffquant.sensitivity.store import save_result

    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # the table as it was before the context column
        conn.execute("CREATE TABLE sensitivity_run (id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, "
                     "recipe TEXT NOT NULL, denoiser TEXT NOT NULL, granularity TEXT NOT NULL, upgrade_type TEXT, "
                     "uniform_rel_error REAL NOT NULL, settings TEXT NOT NULL, seconds REAL NOT NULL, "
                     "created_at TEXT NOT NULL)")
        conn.execute("INSERT INTO sensitivity_run (model, recipe, denoiser, granularity, uniform_rel_error, settings,"
                     " seconds, created_at) VALUES ('m', 'r', 't', 'layer', 0.1, '{}', 1, 'then')")
    result = SensitivityResult(model="m", recipe="r", spec={}, denoiser="t", granularity="layer", upgrade=None,
                               groups=[GroupResult("a", ("a",), 0.5, 10, 4)], module_bytes={},
                               uniform_rel_error=0.2, context="uniform")
    save_result(db, result)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT context FROM sensitivity_run ORDER BY id").fetchall()
    assert rows == [("alone",), ("uniform",)]


def test_the_fast_gguf_layer_computes_what_gguf_linear_does() -> None:
    """The in-context sweep runs GGUF layers dequantized once: bit for bit what diffusers'
    GGUFLinear computes on CPU (negative control: a different type does not match)."""
    import torch

    from diffquant.backends import gguf
    from diffquant.recipes import parse_recipe

    torch.manual_seed(0)
    linear = torch.nn.Linear(512, 64, dtype=torch.bfloat16)
    x = torch.randn(3, 512, dtype=torch.bfloat16)
    q2 = gguf.quantize_linear(linear, parse_recipe("gguf-q2_k").quant[0], "blocks.0.proj", None)
    q3 = gguf.quantize_linear(linear, parse_recipe("gguf-q3_k").quant[0], "blocks.0.proj", None)
    fast = gguf.evaluation_copy(q2)
    assert isinstance(fast, torch.nn.Linear) and type(fast).__name__ == "Linear"
    with torch.no_grad():
        assert torch.equal(fast(x), q2(x))
        assert not torch.equal(fast(x), q3(x))
    assert gguf.evaluation_copy(linear) is linear  # anything else runs as it is


def test_the_cli_and_the_library_share_the_default_context() -> None:
    import inspect

    from diffquant.cli import build_parser
    from diffquant.sensitivity import CONTEXTS, measure_sensitivity

    default = inspect.signature(measure_sensitivity).parameters["context"].default
    args = build_parser().parse_args(["sensitivity", MODEL, "--recipe", "gguf-q2_k"])
    assert args.context == default and default in CONTEXTS
