"""Recipe strings, dataclasses and TOML: parsing, canonical form, hashing, round trips, errors.
No torch needed: recipes are pure data."""

from __future__ import annotations

import subprocess
import sys

import pytest

from diffquant.errors import DiffquantError
from diffquant.recipes import (
    DEFAULT_TARGET,
    SEED_RECIPES,
    Recipe,
    load_recipe,
    parse_recipe,
    recipe_from_toml,
    recipe_to_toml,
)
from diffquant.recipes.catalog import quant_token_names

EXTRA = [
    "bnb-nf4(double_quant,compute_dtype=float16)@transformer+quanto-int8@text_encoder_2+vae-tiling",
    "fp16+gguf-q4_k(keep=norm|*.mod*=q8_0)",
    "torchao-int8wo+offload-group-block(blocks=2,disk)+vae-slicing",
    "bnb-nf4(skip=proj_out|norm_out)+offload-group-leaf(stream)",
    "fp8-layerwise-e5m2+compile(mode=max-autotune-no-cudagraphs)",
    "gguf-q2_k(path=/models/flux-Q2_K.gguf)",
]


@pytest.mark.parametrize("text", list(SEED_RECIPES) + EXTRA + quant_token_names())
def test_string_dataclass_toml_round_trip(text: str) -> None:
    recipe = parse_recipe(text)
    assert parse_recipe(recipe.name) == recipe
    assert recipe_from_toml(recipe_to_toml(recipe)) == recipe
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert recipe_from_toml(recipe_to_toml(recipe)).hash == recipe.hash


def test_parse_fields() -> None:
    recipe = parse_recipe("bnb-nf4(double_quant)@transformer+quanto-int8@text_encoder_2+offload-group-leaf(disk)"
                          "+compile(fullgraph,mode=max-autotune)")
    assert recipe.spec_for("transformer").backend == "bnb"
    assert recipe.spec_for("transformer").option("double_quant") is True
    assert recipe.spec_for("text_encoder_2").qtype == "int8"
    assert recipe.memory.offload == "group-leaf" and recipe.memory.offload_to_disk
    assert recipe.compile.enabled and recipe.compile.fullgraph and recipe.compile.mode == "max-autotune"
    default = parse_recipe("bnb-nf4").quant[0]
    assert default.target == DEFAULT_TARGET and default.qtype == "nf4"
    assert parse_recipe("bf16").quant == ()
    assert parse_recipe("fp16").dtype == "float16"
    assert parse_recipe("bnb-nf4(skip=proj_out|norm_out)").quant[0].skip_modules == ("proj_out", "norm_out")


def test_hash_is_stable_and_discriminating() -> None:
    # Equal recipes written differently hash equal; any change of content changes the hash.
    a = parse_recipe("quanto-int8@text_encoder_2+bnb-nf4@transformer")
    b = parse_recipe("bnb-nf4@transformer+quanto-int8@text_encoder_2")
    assert a == b and a.hash == b.hash and a.name == b.name
    hashes = {parse_recipe(t).hash for t in SEED_RECIPES}
    assert len(hashes) == len(set(SEED_RECIPES))
    # The hash is computed from content, not from Python's per-process hash seed.
    code = "from diffquant.recipes import parse_recipe; print(parse_recipe('bnb-nf4+offload-model').hash)"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout.strip()
    assert other == parse_recipe("bnb-nf4+offload-model").hash


def test_toml_file_covers_what_strings_cannot(tmp_path) -> None:
    path = tmp_path / "r.toml"
    path.write_text('''
schema_version = 1
dtype = "bfloat16"
[[quant]]
backend = "torchao"
type = "int8wo"
target = "transformer"
skip_modules = ["proj_out", "norm_out"]
[[quant]]
backend = "bnb"
type = "nf4"
target = "text_encoder_2"
options = { double_quant = true }
[memory]
offload = "group-block"
blocks_per_group = 3
[compile]
enabled = true
mode = "max-autotune"
''')
    recipe = load_recipe(str(path))
    assert recipe.spec_for("transformer").skip_modules == ("proj_out", "norm_out")
    assert recipe.memory.blocks_per_group == 3
    assert parse_recipe(recipe.name) == recipe


@pytest.mark.parametrize("text, fragments", [
    ("bnb-nf5", ["Unknown bitsandbytes type 'nf5'", "Did you mean: 'nf4'", "fp4, int8, nf4"]),
    ("bnbnf4", ["Unknown recipe token 'bnbnf4'", "'bnb-nf4'", "diffquant recipes"]),
    ("torchao-int8", ["Unknown torchao type", "int8wo"]),
    ("bnb-nf4(double_quant=maybe)", ["is a flag"]),
    ("bnb-nf4(doubel_quant)", ["Unknown option", "double_quant"]),
    ("bnb-int8(double_quant)", ["double_quant only applies to bnb 4-bit"]),
    ("offload-model+offload-group-leaf", ["Contradictory offload options"]),
    ("bf16+fp16", ["Two dtypes"]),
    ("bnb-nf4+quanto-int8", ["quantized twice"]),
    ("compile(mode=fast)", ["compile(mode)", "max-autotune"]),
    ("offload-seq+compile", ["contradict"]),
    ("offload-model(stream)", ["takes no options"]),
    ("offload-group-leaf(blocks=2)", ["'blocks' only applies to offload-group-block"]),
    ("vae-tiling@vae", ["only applies to quantization tokens"]),
    ("gguf-q4_k(path=x.gguf,keep=norm)", ["keep' patterns only apply"]),
    ("", ["Empty recipe"]),
    ("bnb-nf4+", ["Cannot read recipe token"]),
])
def test_bad_recipes_get_clear_errors(text: str, fragments: list[str]) -> None:
    with pytest.raises(DiffquantError) as info:
        parse_recipe(text)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message


def test_bad_toml_errors(tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[quant]]\nbackend = "bnb"\ntype = "nf4"\ncolour = "red"\n')
    with pytest.raises(DiffquantError, match="Unknown quant field 'colour'"):
        load_recipe(str(path))
    path.write_text("not = [valid")
    with pytest.raises(DiffquantError, match="does not parse"):
        load_recipe(str(path))
    with pytest.raises(DiffquantError, match="not found"):
        load_recipe(str(tmp_path / "missing.toml"))
