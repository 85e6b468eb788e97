"""The recipes / generate / quantize commands as a user runs them: output, exit codes, files."""

from __future__ import annotations

import json
import subprocess
import sys

from PIL import Image

from diffquant.cli import main
from diffquant.recipes.catalog import quant_token_names


def test_recipes_lists_every_recipe_with_verdict(capsys) -> None:
    assert main(["recipes", "--device", "cpu", "--format", "json"]) == 0
    rows = {row["recipe"]: row for row in json.loads(capsys.readouterr().out)["recipes"]}
    for token in quant_token_names():
        if token in ("fp8-layerwise-e4m3",):  # an alias of fp8-layerwise
            continue
        assert token in rows, token
    assert rows["bnb-nf4"]["runs_here"] and "by hand" in rows["bnb-nf4"]["reason"]
    assert not rows["torchao-int4wo"]["runs_here"] and "CPU layout" in rows["torchao-int4wo"]["reason"]
    assert not rows["offload-model"]["runs_here"] and "accelerator" in rows["offload-model"]["reason"]
    assert rows["offload-group-leaf(disk)"]["runs_here"]


def test_recipes_table_and_check(capsys) -> None:
    assert main(["recipes", "--device", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "runs on cuda?" in out and "zoo:tiny-flux" in out
    assert main(["recipes", "--check", "bnb-nf4@transformer+quanto-int8@text_encoder_2"]) == 0
    out = capsys.readouterr().out
    assert "canonical: quanto-int8@text_encoder_2+bnb-nf4@transformer" in out and "[[quant]]" in out


def test_generate_writes_png_with_provenance(tmp_path) -> None:
    out = tmp_path / "img.png"
    assert main(["generate", "zoo:tiny-flux", "--recipe", "quanto-int8", "--prompt", "a red circle",
                 "--seed", "7", "--size", "64x64", "--steps", "2", "-o", str(out)]) == 0
    image = Image.open(out)
    assert image.size == (64, 64)
    assert image.text["diffquant.recipe"] == "quanto-int8" and image.text["diffquant.seed"] == "7"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_user_errors_exit_2_without_traceback(tmp_path) -> None:
    for args, fragment in (
        (["generate", "zoo:tiny-flux", "--recipe", "bnb-nf5", "--prompt", "x"], "Did you mean: 'nf4'"),
        (["generate", "zoo:tiny-flux", "--prompt", "x", "--size", "60x64"], "multiple of 16"),
        (["quantize", "zoo:tiny-flux", "--recipe", "bf16", "-o", str(tmp_path / "q")], "quantizes nothing"),
        (["quantize", "zoo:tiny-flux", "--recipe", "torchao-int4wo", "-o", str(tmp_path / "q")], "CPU layout"),
    ):
        result = subprocess.run([sys.executable, "-m", "diffquant.cli", *args, "--device", "cpu"],
                                check=False, capture_output=True, text=True)
        assert result.returncode == 2, result.stderr
        assert fragment in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "q").exists()


def test_quantize_command_writes_a_loadable_folder(tmp_path, capsys) -> None:
    import diffquant
    from diffquant.inspect import component_stats

    out = tmp_path / "nf4"
    assert main(["quantize", "zoo:tiny-flux", "--recipe", "bnb-nf4", "-o", str(out), "--device", "cpu"]) == 0
    assert "transformer: bnb-nf4" in capsys.readouterr().out
    pipe = diffquant.load_pipeline(str(out), device="cpu")
    assert component_stats(pipe)["transformer"].quantized_bits_per_weight < 5
