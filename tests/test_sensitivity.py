"""Sensitivity sweeps with each group measured alone (``context="alone"``, the default):
grouping, reproducibility, a negative control, agreement with a real load, and mixed recipes that
are ordinary recipes. The in-context sweep has tests/test_sensitivity_incontext.py."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from diffquant.sensitivity.groups import make_groups

MODEL = "zoo:tiny-flux"
NAMES = ["x_embedder", "transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.net.2",
         "transformer_blocks.1.attn.to_q", "single_transformer_blocks.0.proj_out", "proj_out"]


def test_groups_by_layer_block_and_kind() -> None:
    assert [g.name for g in make_groups(NAMES, "layer")] == NAMES
    blocks = {g.name: g.modules for g in make_groups(NAMES, "block")}
    assert blocks["transformer_blocks.0"] == ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.net.2")
    assert blocks["x_embedder"] == ("x_embedder",) and "single_transformer_blocks.0" in blocks
    kinds = {g.name: g.modules for g in make_groups(NAMES, "kind")}
    assert kinds["transformer_blocks.*.attn.to_q"] == ("transformer_blocks.0.attn.to_q",
                                                       "transformer_blocks.1.attn.to_q")
    # every name lands in exactly one group, whatever the granularity
    for granularity in ("layer", "block", "kind"):
        members = [m for g in make_groups(NAMES, granularity) for m in g.modules]
        assert sorted(members) == sorted(NAMES)


def test_unknown_granularity_is_a_clear_error() -> None:
    from diffquant.errors import DiffquantError

    with pytest.raises(DiffquantError, match="Did you mean: 'block'"):
        make_groups(NAMES, "blocks")


@pytest.fixture(scope="module")
def nf4_sweep():
    from diffquant.sensitivity import measure_sensitivity

    return measure_sensitivity(MODEL, "bnb-nf4", granularity="block", calls_per_prompt=2, psnr_top=1,
                               device="cpu", prompts=["a red square", "a blue circle"], context="alone")


def test_ranking_is_reproducible(nf4_sweep) -> None:
    from diffquant.sensitivity import measure_sensitivity

    first, _ = nf4_sweep
    again, _ = measure_sensitivity(MODEL, "bnb-nf4", granularity="block", calls_per_prompt=2, psnr_top=0,
                                   device="cpu", prompts=["a red square", "a blue circle"], context="alone")
    assert [g.name for g in first.groups] == [g.name for g in again.groups]
    assert [g.rel_error for g in first.groups] == [g.rel_error for g in again.groups]
    assert first.groups[0].rel_error > first.groups[-1].rel_error > 0
    assert first.groups[0].psnr_db is not None and first.groups[1].psnr_db is None
    # 4-bit storage: the recipe's bytes are well under the reference's for every group
    assert all(g.bytes_quant < 0.5 * g.bytes_ref for g in first.groups if g.bytes_ref > 8192)


def test_a_broken_quantizer_for_one_layer_ranks_it_first(monkeypatch) -> None:
    """Negative control: a quantizer that scrambles one layer's weights must top the ranking."""
    import torch

    from diffquant.backends import bnb
    from diffquant.sensitivity import measure_sensitivity

    victim = "single_transformer_blocks.0.proj_out"
    real = bnb.quantize_linear

    def broken(linear, spec, name, model):
        layer = real(linear, spec, name, model)
        if name == victim:
            layer = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                    dtype=linear.weight.dtype)
            with torch.no_grad():  # noise 10x the layer's own scale, as a broken kernel would give
                layer.weight.copy_(torch.randn_like(layer.weight) * 10 * float(linear.weight.float().std()))
        return layer

    monkeypatch.setattr(bnb, "quantize_linear", broken)
    result, _ = measure_sensitivity(MODEL, "bnb-nf4", granularity="kind", calls_per_prompt=1, psnr_top=0,
                                    device="cpu", prompts=["a red square"], context="alone")
    assert result.groups[0].name == "single_transformer_blocks.*.proj_out"
    assert victim in result.groups[0].modules


def _latent_error(recipe) -> float:
    from diffquant.pipeline import generate, load_pipeline

    def latents(r):
        pipe = load_pipeline(MODEL, r, device="cpu")
        return [generate(pipe, p, seed=0).latents for p in ("a red square", "a blue circle")]

    ref, got = latents("bf16"), latents(recipe)
    num = sum(float((a - b).pow(2).sum()) for a, b in zip(got, ref, strict=True))
    return num / sum(float(b.pow(2).sum()) for b in ref)


def test_top_groups_agree_with_a_real_load(nf4_sweep) -> None:
    """Quantizing only the top group through load_pipeline moves the image more than only the
    bottom group: the ranking means what a user would measure."""
    from dataclasses import replace

    from diffquant.backends import bnb
    from diffquant.recipes import Recipe, parse_recipe

    result, models = nf4_sweep
    base = parse_recipe("bnb-nf4@transformer")
    everything = list(result.module_bytes)

    def only(group) -> Recipe:
        others = {m: None for m in everything if m not in group.modules}
        spec = bnb.keep_precise(base.quant[0], others, models["transformer"])
        return replace(base, quant=(spec,))

    ranked = [g for g in result.groups if not g.component]  # the transformer's groups
    top, bottom = ranked[0], ranked[-1]
    assert _latent_error(only(top)) > 2 * _latent_error(only(bottom))


def test_mixed_recipe_is_an_ordinary_recipe_within_budget(nf4_sweep, tmp_path: Path) -> None:
    from diffquant.backends import bnb
    from diffquant.components import read_components, resolve_model
    from diffquant.recipes import load_recipe, parse_recipe, recipe_to_toml
    from diffquant.sensitivity import mix_recipe

    result, models = nf4_sweep
    budget = int(0.25 * result.total_quant_bytes())
    recipe = parse_recipe("bnb-nf4")
    mixed, choices, spent = mix_recipe(result, recipe, models, budget, read_components(resolve_model(MODEL)))
    assert choices and 0 < spent <= budget
    # the most error per byte goes first, kept in its own component's options
    assert {s.target for s in mixed.quant} == {"transformer", "text_encoder_2"}
    first = next(g for g in result.groups if g.name == choices[0].group)
    component = first.component or "transformer"
    assert all(bnb.keeps_precise(mixed.spec_for(component), m, models[component]) for m in first.modules)
    path = tmp_path / "mixed.toml"
    path.write_text(recipe_to_toml(mixed))
    again = load_recipe(str(path))
    assert again == mixed and again.hash == mixed.hash
    assert _latent_error(mixed) < _latent_error(recipe)


def test_gguf_mix_bumps_types_and_loads(tmp_path: Path) -> None:
    from diffquant.components import read_components, resolve_model
    from diffquant.inspect import component_stats
    from diffquant.pipeline import load_pipeline
    from diffquant.recipes import parse_recipe
    from diffquant.sensitivity import measure_sensitivity, mix_recipe

    result, models = measure_sensitivity(MODEL, "gguf-q2_k", granularity="kind", calls_per_prompt=1,
                                         psnr_top=0, device="cpu", prompts=["a red square"], context="alone")
    assert not result.encoders  # GGUF quantizes the denoiser only
    assert result.upgrade == "q3_k"
    assert all(g.bytes_quant < g.bytes_upgrade < g.bytes_ref for g in result.groups)
    recipe = parse_recipe("gguf-q2_k")
    mixed, choices, spent = mix_recipe(result, recipe, models, int(0.3 * result.total_quant_bytes()),
                                       read_components(resolve_model(MODEL)))
    assert choices and "Q3_K" in str(mixed.quant[0].option("keep"))
    uniform = component_stats(load_pipeline(MODEL, recipe, device="cpu"))["transformer"].weight_bytes
    bumped = component_stats(load_pipeline(MODEL, mixed, device="cpu"))["transformer"].weight_bytes
    assert bumped - uniform == spent


def test_cli_writes_ranking_db_and_mixed_toml(tmp_path: Path, capsys) -> None:
    from diffquant.cli import main

    out, db = tmp_path / "mixed.toml", tmp_path / "s.db"
    code = main(["sensitivity", MODEL, "--recipe", "bnb-nf4", "--groups", "block", "--calls", "1",
                 "--psnr-top", "0", "--device", "cpu", "--extra-memory", "10%", "-o", str(out),
                 "--db", str(db), "--format", "json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["granularity"] == "block" and data["mix"]["file"] == str(out) and out.is_file()
    with sqlite3.connect(db) as conn:
        ranked = conn.execute("SELECT group_name FROM sensitivity_group ORDER BY rank").fetchall()
    assert [r[0] for r in ranked] == [g["name"] for g in data["groups"]]


@pytest.mark.parametrize("argv, message", [
    (["--recipe", "bf16"], "does not quantize the denoiser"),
    (["--recipe", "bnb-nf4", "--extra-memory", "10%"], "needs both a budget and an output"),
    (["--recipe", "bnb-nf4", "--groups", "blok"], "Did you mean: 'block'"),
])
def test_cli_errors(argv: list[str], message: str, capsys) -> None:
    from diffquant.cli import main

    assert main(["sensitivity", MODEL, "--device", "cpu", *argv]) == 2
    assert message in capsys.readouterr().err
