"""Issue 16's examples, one test each: bad recipe input is refused with one paragraph that names the
field and the fix, never a traceback and never a silently different recipe. Pure Python, no torch."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffquant.errors import DiffquantError
from diffquant.recipes import Recipe, load_recipe, parse_recipe, recipe_from_toml, recipe_to_toml
from diffquant.recipes.catalog import GGUF_KEEP_TYPES

BNB = '[[quant]]\nbackend = "bnb"\ntype = "nf4"\n'


def refused(fn, *args: object) -> str:
    with pytest.raises(DiffquantError) as info:
        fn(*args)
    message = str(info.value)
    assert "\n\n" not in message and "Traceback" not in message  # one paragraph
    return message


@pytest.mark.parametrize(("toml", "field", "fix"), [
    (BNB + 'skip_modules = "proj_out"', "quant[0].skip_modules", 'skip_modules = ["proj_out"]'),
    ('[memory]\nvae_tiling = "false"', "memory.vae_tiling", "vae_tiling = false"),
    ('[memory]\noffload = "group-leaf"\nuse_stream = "no"', "memory.use_stream", "use_stream = false"),
    ('[compile]\nenabled = "no"', "compile.enabled", "enabled = false"),
    ('quant = "bnb"', "quant", '[[quant]] then backend = "bnb"'),
    ('memory = "x"', "memory", "[memory]"),
    ('schema_version = "abc"', "schema_version", "schema_version = 1"),
    ('[memory]\noffload = "group-block"\nblocks_per_group = "2"', "memory.blocks_per_group", "blocks_per_group = 2"),
    ("[compile]\nenabled = true\nmode = 5", "compile.mode", 'mode = "max-autotune"'),
])
def test_toml_examples_of_the_issue(toml: str, field: str, fix: str) -> None:
    message = refused(recipe_from_toml, toml)
    assert f"Recipe field {field} " in message and fix in message, message
    assert "got " in message  # what was given


def test_toml_strings_are_never_booleans_or_letters() -> None:
    # The accepted spellings: a list of names, TOML booleans.
    recipe = recipe_from_toml(BNB + 'skip_modules = ["proj_out"]\n[memory]\nvae_tiling = false\n')
    assert recipe.quant[0].skip_modules == ("proj_out",) and recipe.memory.vae_tiling is False
    assert "one of default, reduce-overhead, max-autotune" in refused(recipe_from_toml,
                                                                      "[compile]\nenabled = true\nmode = 5")
    message = refused(recipe_from_toml, BNB + 'options = { double_quant = "yes" }')
    assert "quant[0].options.double_quant" in message and "double_quant = true" in message


@pytest.mark.parametrize(("text", "fragments"), [
    ("torchao-int4wo(group_size=0)", ["group_size", "0 is not allowed", "32, 64, 128, 256",
                                      "torchao-int4wo(group_size=128)"]),
    ("torchao-intx4wo(group_size=-32)", ["group_size", "-32 is not allowed", "group_size=128"]),
    # int8wo takes group_size since its grouped form (issue 14); types without groups refuse it
    ("torchao-int8wo(group_size=0)", ["group_size", "0 is not allowed", "32, 64, 128, 256"]),
    ("torchao-int8dq(group_size=0)", ["group_size only applies to torchao int4wo, intx4wo and int8wo",
                                      "drop group_size"]),
    ("torchao-fp8wo(group_size=64)", ["would only change the recipe's hash", "drop group_size"]),
    ("compile(mode=max-autotune)+compile", ["'compile' is given twice", "keep one compile token"]),
    ("vae-tiling+vae-tiling", ["'vae-tiling' is given twice"]),
    ("offload-model+offload-model", ["given twice"]),
    ("gguf-q4_k(keep=norm=Q9_9)", ["keep", "unknown GGUF type 'Q9_9'", "Q8_0", "keep=norm=Q8_0"]),
    ("gguf-q4_k(keep=norm[0=Q8_0)", ["keep", "bad pattern", "keep=norm|*.mod*=Q8_0"]),
    ("gguf-q4_k(keep=norm|norm=Q8_0)", ["norm given twice"]),
    ("gguf-q4_k(path=x.gguf,layout=bfl)", ["'layout' only apply when diffquant writes"]),
    ("offload-group-block(blocks=0)", ["blocks", "between 1 and 1024", "blocks=2"]),
    ("offload-group-block(blocks=-3)", ["blocks", "between 1 and 1024"]),
    ("offload-group-block(blocks=two)", ["needs a whole number", "blocks=2"]),
    ("bnb-nf4(skip=proj_out|proj_out)", ["proj_out given twice"]),
    ("bnb-nf4(skip=proj out)", ["not a valid name", "skip=proj_out|norm_out"]),
    ("compile(components=denoiser|denoiser)", ["denoiser given twice"]),
    ("bnb-nf4(double_quant=maybe)", ["is a flag", "bnb-nf4(double_quant)"]),
    ("bnb-nf4(compute_dtype)", ["needs a value"]),
    ("bnb-nf4(group_size=64)", ["Unknown option for 'bnb-nf4'"]),
])
def test_string_examples_of_the_issue(text: str, fragments: list[str]) -> None:
    message = refused(parse_recipe, text)
    for fragment in fragments:
        assert fragment in message, message


def test_group_size_still_works_where_it_is_used_and_int8wo_hash_is_stable() -> None:
    assert parse_recipe("torchao-int4wo(group_size=64)").quant[0].option("group_size") == 64
    assert parse_recipe("torchao-intx4wo(group_size=32)").name == "torchao-intx4wo(group_size=32)"
    # int8wo has one spelling, so one hash: an option it ignores cannot make a second one.
    assert parse_recipe("torchao-int8wo").hash == parse_recipe("bf16+torchao-int8wo").hash


def test_same_meaning_same_recipe() -> None:
    """Spellings that mean the same thing give the same recipe and hash."""
    pairs = [("bnb-nf4(double_quant=false)", "bnb-nf4"), ("bnb-nf4(double_quant=yes)", "bnb-nf4(double_quant)"),
             ("gguf-q4_k(keep=norm=q8_0)", "gguf-q4_k(keep=norm=Q8_0)"),
             ("offload-group-block(blocks=1)", "offload-group-block"), ("compile(mode=default)", "compile"),
             ("compile(components=denoiser)", "compile"), ("offload-sequential", "offload-seq"),
             ("gguf-q4_k(layout=diffusers)", "gguf-q4_k")]
    for a, b in pairs:
        assert parse_recipe(a) == parse_recipe(b) and parse_recipe(a).hash == parse_recipe(b).hash, (a, b)


def test_string_values_are_read_by_the_options_kind() -> None:
    # A GGUF path that looks like a number or a boolean stays a path (the string form used to guess).
    for path in ("123", "yes", "off"):
        spec = parse_recipe(f"gguf-q8_0(path={path})").quant[0]
        assert spec.option("path") == path
        recipe = parse_recipe(f"gguf-q8_0(path={path})")
        assert recipe_from_toml(recipe_to_toml(recipe)) == recipe


def test_compile_components_round_trip() -> None:
    recipe = parse_recipe("compile(components=denoiser|vae,fullgraph)")
    assert recipe.compile.components == ("denoiser", "vae")
    assert parse_recipe(recipe.name) == recipe and recipe_from_toml(recipe_to_toml(recipe)).hash == recipe.hash


@pytest.mark.parametrize(("toml", "fragment"), [
    ('[compile]\nmode = "max-autotune"', "compile is not enabled"),
    ("[memory]\nblocks_per_group = 3", "only applies to offload-group-block"),
    (BNB + "options = { skip = \"proj_out\" }", "skip_modules in TOML"),
    ('[[quant]]\nbackend = "torchao"\ntype = "int8dq"\noptions = { group_size = 64 }', "group_size only applies"),
    ('[[quant]]\nbackend = "gguf"\ntype = "q4_k"\noptions = { keep = "norm=Q9_9" }', "unknown GGUF type"),
    (BNB + 'target = "text encoder"', "component name"),
    ('dtype = "bf16"', "Did you mean: 'bfloat16'"),
    ("colour = 1", "Unknown recipe field 'colour'"),
    ('[memory]\ntiling = true', "Did you mean: 'vae_tiling'"),
    ('[[quant]]\nbackend = 3\ntype = "nf4"', "quant[0].backend"),
    ('[[quant]]\nbackend = "bnb"\ntype = ["nf4"]', "quant[0].type"),
    ('[compile]\nenabled = true\ncomponents = "vae"', 'components = ["vae"]'),
    ("schema_version = 99", "newer than this diffquant's"),
    ("schema_version = 0", "schema_version"),
])
def test_more_toml_mistakes(toml: str, fragment: str) -> None:
    assert fragment in refused(recipe_from_toml, toml)


def test_from_dict_refuses_non_tables_and_checks_api_built_recipes() -> None:
    assert "must be a table" in refused(Recipe.from_dict, ["bnb-nf4"])
    from diffquant.recipes import QuantSpec
    from diffquant.recipes.validate import check_recipe

    bad = Recipe(quant=(QuantSpec("torchao", "fp8wo", options=(("group_size", 64),)),))
    assert "group_size only applies" in refused(check_recipe, bad)


def test_gguf_keep_types_match_the_writer() -> None:
    from diffquant.gguf_writer.quantize import SUPPORTED_TYPES

    assert GGUF_KEEP_TYPES == SUPPORTED_TYPES


def test_recipes_check_prints_the_error_without_traceback(tmp_path: Path, capsys) -> None:
    from diffquant.cli import main

    path = tmp_path / "my.toml"
    path.write_text('[memory]\nvae_tiling = "false"\n')
    assert main(["recipes", "--check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "memory.vae_tiling" in err and "vae_tiling = false" in err and "Traceback" not in err
    path.write_bytes(b"\xff\xfe[memory]")
    assert "Cannot read recipe file" in refused(load_recipe, str(path))
