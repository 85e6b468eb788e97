"""The backends and options added after the seed (issue 14): SDNQ (with and without its quantized
matmul), NVIDIA ModelOpt and torchao's Blackwell formats (refused before loading where the hardware
lacks them, naming a recipe that runs), compile(regional), and quanto's upstream deprecation."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

# SDNQ compiles its dequantize step with torch.compile by default: minutes on a busy CPU for a
# test that checks results, not speed. Set before sdnq is first imported.
os.environ.setdefault("SDNQ_USE_TORCH_COMPILE", "0")

import diffquant
from diffquant.backends import get_backend, why_not_here
from diffquant.errors import BackendUnavailable, DiffquantError
from diffquant.inspect import component_stats
from diffquant.pipeline import generate
from diffquant.recipes import parse_recipe

MODEL = "zoo:tiny-flux"

# recipe -> (minimum PSNR in dB of the image against bf16, most transformer bytes as a share of bf16's).
# tiny-flux is narrow (256 wide): SDNQ leaves its embedders, proj_out and norms in bf16 (its per-model
# skip list and its 16384-element floor), so the share is well above bits/16.
SDNQ_EXPECTED = {
    "sdnq-int8": (42.0, 0.70),
    "sdnq-uint4": (38.0, 0.50),
    "sdnq-int6": (33.0, 0.60),
    "sdnq-int4": (26.0, 0.45),
    "sdnq-fp8": (33.0, 0.70),
    "sdnq-fp6": (30.0, 0.60),
    "sdnq-fp4": (24.0, 0.45),
}
FAST = {"sdnq-int8", "sdnq-uint4"}  # the rest are the same code path with another weights_dtype
SDNQ_CASES = [pytest.param(r, m, marks=() if r in FAST else pytest.mark.slow, id=f"{r}{'(matmul)' if m else ''}")
              for r in SDNQ_EXPECTED for m in (False, True)]

_IMAGES: dict[str, np.ndarray] = {}


def _image(pipe) -> np.ndarray:
    import torch

    out = generate(pipe, "a red circle at the top left", seed=0, steps=2)
    assert bool(torch.isfinite(out.latents).all()), "non-finite latents"
    return np.asarray(out.image).astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def bf16():
    pipe = diffquant.load_pipeline(MODEL, "bf16", device="cpu")
    return _image(pipe), component_stats(pipe)


def _sdnq_layers(module) -> list:
    return [m for m in module.modules() if hasattr(m, "sdnq_dequantizer")]


# --- SDNQ --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("recipe", "matmul"), SDNQ_CASES)
def test_sdnq_runs_on_cpu_quantized_and_close(recipe: str, matmul: bool, bf16) -> None:
    pytest.importorskip("sdnq")
    reference, ref_stats = bf16
    min_psnr, max_share = SDNQ_EXPECTED[recipe]
    name = f"{recipe}(matmul)" if matmul else recipe
    pipe = diffquant.load_pipeline(MODEL, name, device="cpu")
    image = _image(pipe)
    _IMAGES[name] = image
    assert image.std() > 0
    layers = _sdnq_layers(pipe.transformer)
    assert layers, "no SDNQ layer in the transformer"
    assert {layer.sdnq_dequantizer.weights_dtype for layer in layers} == {
        get_backend("sdnq").WEIGHTS_DTYPES[parse_recipe(recipe).quant[0].qtype]}
    assert any(layer.sdnq_dequantizer.use_quantized_matmul for layer in layers) == matmul
    # The default target includes the large text encoder: T5 goes through transformers' side.
    assert _sdnq_layers(pipe.text_encoder_2)
    stats = component_stats(pipe)
    assert stats["transformer"].weight_bytes < max_share * ref_stats["transformer"].weight_bytes
    assert stats["text_encoder_2"].weight_bytes < ref_stats["text_encoder_2"].weight_bytes
    assert psnr(image, reference) >= min_psnr


def test_sdnq_four_bit_costs_more_than_eight_bit(bf16) -> None:
    """The PSNR floor above can fail: fewer bits give a measurably worse image."""
    pytest.importorskip("sdnq")
    reference, _ = bf16
    for name in ("sdnq-int8", "sdnq-uint4"):
        if name not in _IMAGES:
            _IMAGES[name] = _image(diffquant.load_pipeline(MODEL, name, device="cpu"))
    assert psnr(_IMAGES["sdnq-uint4"], reference) < psnr(_IMAGES["sdnq-int8"], reference) - 0.5


def test_sdnq_export_reloads_with_identical_images(tmp_path) -> None:
    pytest.importorskip("sdnq")
    from diffquant.serialize import save_quantized

    pipe = diffquant.load_pipeline(MODEL, "sdnq-uint4", device="cpu")
    before = _image(pipe)
    out = save_quantized(pipe, tmp_path / "export")
    formats = json.loads((out / "diffquant_quantized.json").read_text())["components"]
    assert formats["transformer"] == formats["text_encoder_2"] == "native"  # library save_pretrained
    config = json.loads((out / "transformer" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "sdnq"
    reloaded = diffquant.load_pipeline(str(out), "bf16", device="cpu")
    assert _sdnq_layers(reloaded.transformer) and _sdnq_layers(reloaded.text_encoder_2)
    assert np.array_equal(_image(reloaded), before)


def test_sdnq_options_and_skip() -> None:
    from diffquant.backends.base import ComponentContext

    spec = parse_recipe("sdnq-fp4(matmul,skip=proj_out|norm_out)@transformer").quant[0]
    kwargs = get_backend("sdnq").sdnq_kwargs(spec)
    assert kwargs == {"weights_dtype": "float4_e2m1fn", "use_quantized_matmul": True,
                      "modules_to_not_convert": ["proj_out", "norm_out"]}
    pytest.importorskip("sdnq")
    ctx = ComponentContext("transformer", "diffusers", "FluxTransformer2DModel", ".", None, "cpu", True)
    config = get_backend("sdnq").load_config(spec, ctx)
    assert config.weights_dtype == "float4_e2m1fn" and config.use_quantized_matmul
    with pytest.raises(DiffquantError, match="option"):
        parse_recipe("sdnq-int8(group=64)")
    with pytest.raises(DiffquantError, match="uint4"):
        parse_recipe("sdnq-uint3")  # not offered: no smaller than uint4 once scales are counted


# --- Refused before loading, with the reason and a recipe that runs -----------------------------

REFUSED_ON_CPU = {
    "modelopt-fp8": ["CUDA", "GPU"], "modelopt-int8": ["CUDA"], "modelopt-int4": ["CUDA"],
    "modelopt-nf4": ["CUDA"], "modelopt-nvfp4": ["CUDA"],
    "torchao-nvfp4": ["10.0", "Blackwell"], "torchao-mxfp8": ["10.0", "Blackwell"],
    "torchao-fp8dq": ["8.9"],
}


def _nearest(reason: str) -> str:
    match = re.search(r"Nearest that runs here: ([A-Za-z0-9_\-]+)", reason)
    assert match, f"no nearest recipe named in: {reason}"
    return match[1]


@pytest.mark.parametrize("recipe", sorted(REFUSED_ON_CPU))
def test_refused_on_cpu_before_loading(recipe: str, monkeypatch) -> None:
    import diffquant.components

    def no_loading(model: str):
        raise AssertionError("the model was resolved: the refusal came after loading began")

    monkeypatch.setattr(diffquant.components, "resolve_model", no_loading)
    with pytest.raises(BackendUnavailable) as info:
        diffquant.load_pipeline(MODEL, recipe, device="cpu")
    message = str(info.value)
    for fragment in REFUSED_ON_CPU[recipe]:
        assert fragment in message
    nearest = _nearest(message)
    assert why_not_here(parse_recipe(nearest), "cpu") is None, f"{nearest} does not run on CPU either"


@pytest.fixture
def fake_gpu(monkeypatch):
    """Judge for a CUDA GPU of the given compute capability (modelopt counted as installed)."""
    import torch

    from diffquant.backends import modelopt

    monkeypatch.setattr(modelopt, "package_missing", lambda name: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def set_capability(major: int, minor: int) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (major, minor))
    return set_capability


@pytest.mark.parametrize(("capability", "refused", "runs"), [
    ((8, 6), {"modelopt-fp8", "modelopt-nvfp4", "torchao-nvfp4", "torchao-mxfp8"},
     {"modelopt-int8", "modelopt-int4", "modelopt-nf4"}),
    ((9, 0), {"modelopt-nvfp4", "torchao-nvfp4", "torchao-mxfp8"},
     {"modelopt-fp8", "modelopt-int8", "modelopt-int4", "modelopt-nf4"}),
    ((10, 0), set(), {"modelopt-fp8", "modelopt-nvfp4", "torchao-nvfp4", "torchao-mxfp8"}),
])
def test_gpu_hardware_decides(capability, refused, runs, fake_gpu) -> None:
    fake_gpu(*capability)
    for recipe in refused:
        reason = why_not_here(parse_recipe(recipe), "cuda")
        assert reason and "compute capability" in reason, recipe
        nearest = _nearest(reason)
        assert why_not_here(parse_recipe(nearest), "cuda") is None, (recipe, nearest)
    for recipe in runs:
        assert why_not_here(parse_recipe(recipe), "cuda") is None, recipe


def test_modelopt_is_denoiser_only_and_not_for_text_encoders() -> None:
    from diffquant.backends.base import ComponentContext
    from diffquant.components import read_components, resolve_model, resolve_targets

    targets = resolve_targets(parse_recipe("modelopt-fp8"), read_components(resolve_model(MODEL)))
    assert set(targets) == {"transformer"}
    ctx = ComponentContext("text_encoder_2", "transformers", "T5EncoderModel", ".", None, "cuda", False)
    with pytest.raises(DiffquantError, match="transformers has no ModelOpt config"):
        get_backend("modelopt").load_config(parse_recipe("modelopt-int8@text_encoder_2").quant[0], ctx)


def test_new_backend_modules_follow_the_interface() -> None:
    from diffquant.recipes.catalog import BACKENDS

    for name in ("sdnq", "modelopt"):
        module = get_backend(name)
        assert module.name == name and name in BACKENDS
        for function in ("why_not_here", "load_config", "load_component"):
            assert callable(getattr(module, function)), (name, function)
        assert module.packages  # versions recorded with results
    assert set(get_backend("sdnq").WEIGHTS_DTYPES) == set(BACKENDS["sdnq"].types)
    assert set(get_backend("modelopt").QUANT_TYPES) == set(BACKENDS["modelopt"].types)


def test_torchao_grouped_int8wo_runs_on_cpu() -> None:
    import torch

    pytest.importorskip("torchao")
    from torchao.quantization import quantize_

    config = get_backend("torchao").ao_config(parse_recipe("torchao-int8wo(group_size=64)").quant[0])
    layer = torch.nn.Sequential(torch.nn.Linear(256, 128)).to(torch.bfloat16)
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    expected = layer(x)
    quantize_(layer, config)
    assert type(layer[0].weight).__name__ == "Int8Tensor"
    got = layer(x)
    rel = float((got.float() - expected.float()).pow(2).mean() / expected.float().pow(2).mean())
    assert 0 < rel < 1e-3


# --- compile(regional) -------------------------------------------------------------------------

def test_compile_regional_parses_and_round_trips() -> None:
    from diffquant.recipes import load_recipe, recipe_to_toml
    from diffquant.recipes.toml_io import recipe_from_toml

    recipe = parse_recipe("sdnq-int8+compile(regional,mode=max-autotune)")
    assert recipe.compile.enabled and recipe.compile.regional and recipe.compile.mode == "max-autotune"
    assert recipe.name == "sdnq-int8+compile(mode=max-autotune,regional)"
    assert parse_recipe(recipe.name) == recipe
    assert recipe_from_toml(recipe_to_toml(recipe)) == recipe
    assert load_recipe(recipe) is recipe
    full = parse_recipe("sdnq-int8+compile(mode=max-autotune)")
    assert full.hash != recipe.hash and not full.compile.regional
    # Recipes without the option keep the dict (and so the hash) they had before it existed.
    assert "regional" not in full.to_dict()["compile"]


def _tiny_flux_transformer():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=2,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                  pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))


class _Pipe:
    def __init__(self, transformer) -> None:
        self.transformer = transformer


def test_compile_regional_compiles_only_the_repeated_blocks() -> None:
    import torch

    from diffquant.memory import apply_compile

    model = _tiny_flux_transformer()
    notes = apply_compile(_Pipe(model), parse_recipe("bf16+compile(regional)"), "transformer")
    compiled = [name for name, m in model.named_modules() if getattr(m, "_compiled_call_impl", None) is not None]
    blocks = [name for name, m in model.named_modules() if type(m).__name__ in model._repeated_blocks]
    assert compiled == blocks and len(blocks) == 3 and "repeated blocks" in notes[0]
    whole = _tiny_flux_transformer()
    apply_compile(_Pipe(whole), parse_recipe("bf16+compile"), "transformer")
    assert whole._compiled_call_impl is not None  # the control: full compile wraps the model itself
    with pytest.raises(DiffquantError, match="repeated blocks"):
        apply_compile(_Pipe(torch.nn.Linear(4, 4)), parse_recipe("bf16+compile(regional)"), "transformer")


@pytest.mark.slow
def test_compile_regional_runs_on_tiny_flux(bf16) -> None:
    reference, _ = bf16
    pipe = diffquant.load_pipeline(MODEL, "bf16+compile(regional)", device="cpu")
    assert pipe.transformer._compiled_call_impl is None
    assert psnr(_image(pipe), reference) >= 35.0


# --- quanto's deprecation ----------------------------------------------------------------------

def test_recipes_mark_quanto_deprecated_upstream(capsys) -> None:
    from diffquant.cli import main

    assert main(["recipes", "--device", "cpu", "--format", "json"]) == 0
    rows = {row["recipe"]: row for row in json.loads(capsys.readouterr().out)["recipes"]}
    for name in ("quanto-int8", "quanto-int4", "quanto-fp8"):
        assert "removed in version 1.0.0" in rows[name]["deprecated"]
    assert rows["bnb-nf4"]["deprecated"] is None and rows["sdnq-uint4"]["deprecated"] is None
    assert rows["sdnq-uint4"]["runs_here"] and rows["sdnq-int8"]["runs_here"]
    assert not rows["modelopt-fp8"]["runs_here"] and rows["compile(regional)"]["runs_here"]
    assert main(["recipes", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    quanto_line = next(line for line in table.splitlines() if "quanto-int8" in line)
    assert "DEPRECATED" in quanto_line
    assert "DEPRECATED" not in next(line for line in table.splitlines() if "bnb-nf4" in line)


def test_sdnq_with_disk_offload_is_refused() -> None:
    # Measured on tiny-flux (diffusers 0.42.1, sdnq 0.2.8): uint4 gave NaN latents, int8(matmul)
    # another image. Offload in RAM is not refused: the disk is what breaks it.
    reason = why_not_here(parse_recipe("sdnq-uint4+offload-group-leaf(disk)"), "cpu")
    assert reason and "sdnq-uint4" in reason and "disk" in reason
    assert why_not_here(parse_recipe("sdnq-uint4+offload-group-leaf"), "cpu") is None
