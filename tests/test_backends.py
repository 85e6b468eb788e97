"""Every seed recipe on zoo:tiny-flux, on this CPU: a finite image close to the bf16 image, layers
that really are quantized (tensor types, bits per weight at the format's floor), and refusals that
say why and what runs instead."""

from __future__ import annotations

import numpy as np
import pytest

import diffquant
from diffquant.backends.bnb import cpu_layout_here as bnb_cpu_layout_here
from diffquant.errors import BackendUnavailable, DiffquantError
from diffquant.inspect import component_stats
from diffquant.pipeline import generate
from diffquant.recipes import SEED_RECIPES, parse_recipe

MODEL = "zoo:tiny-flux"

# recipe -> (tensor type name of a quantized transformer weight, nominal bits of quantized tensors,
#            minimum PSNR in dB of the image against bf16)
EXPECTED = {
    "bnb-nf4": ("Params4bit", 4.5, 28.0),
    "bnb-int8": ("Int8Params", 8.0, 38.0),
    "torchao-int8wo": ("Int8Tensor", 8.125, 38.0),
    "torchao-fp8wo": ("Float8Tensor", 8.125, 35.0),
    "quanto-int4": ("TinyGemmWeightQBitsTensor", 4.25, 30.0),
    "quanto-int8": ("WeightQBytesTensor", 8.0625, 38.0),
    "quanto-fp8": ("WeightQBytesTensor", 8.0625, 35.0),
    "gguf-q2_k": ("GGUFParameter", 2.625, 28.0),
    "gguf-q4_1": ("GGUFParameter", 5.0, 35.0),
    "gguf-q8_0": ("GGUFParameter", 8.5, 38.0),
    "fp8-layerwise": ("Parameter", 8.0, 35.0),
}


def _image(pipe) -> np.ndarray:
    import torch

    out = generate(pipe, "a red circle at the top left", seed=0, steps=3)
    # NaNs would be hidden by the uint8 image conversion: check the latents.
    assert bool(torch.isfinite(out.latents).all()), "non-finite latents"
    return np.asarray(out.image).astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return _image(diffquant.load_pipeline(MODEL, "bf16", device="cpu"))


def test_seed_list_is_covered() -> None:
    runnable = {r for r in SEED_RECIPES if "+" not in r and r != "bf16" and r != "torchao-int4wo"}
    assert runnable == set(EXPECTED)


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_seed_recipe_runs_quantized_and_close(recipe: str, reference: np.ndarray) -> None:
    type_name, nominal_bits, min_psnr = EXPECTED[recipe]
    pipe = diffquant.load_pipeline(MODEL, recipe, device="cpu")
    image = _image(pipe)
    assert np.isfinite(image).all() and image.std() > 0
    weight = pipe.transformer.transformer_blocks[0].attn.to_q.weight
    assert type(weight).__name__ == type_name
    if recipe == "fp8-layerwise":
        import torch

        assert weight.dtype == torch.float8_e4m3fn  # stored in fp8 between calls
    stats = component_stats(pipe)["transformer"]
    assert stats.quantized_tensors > 0
    # The quantized tensors hold the format's bits per weight (payload + scales), not more.
    if recipe == "bnb-nf4" and bnb_cpu_layout_here():
        nominal_bits = 4.25  # bitsandbytes' CPU layout keeps the block scales in bf16 (backends/bnb.py)
    assert stats.quantized_bits_per_weight == pytest.approx(nominal_bits, rel=0.03)
    bf16_bytes = 2 * stats.params
    assert stats.weight_bytes < 0.75 * bf16_bytes
    if parse_recipe(recipe).quant[0].backend in ("bnb", "torchao", "quanto"):
        # Default target: the large text encoder is quantized too.
        assert component_stats(pipe)["text_encoder_2"].quantized_tensors > 0
    assert psnr(image, reference) >= min_psnr


def test_four_bit_costs_more_than_eight_bit(reference: np.ndarray) -> None:
    scores = {r: psnr(_image(diffquant.load_pipeline(MODEL, r, device="cpu")), reference)
              for r in ("quanto-int4", "quanto-int8")}
    assert scores["quanto-int4"] < scores["quanto-int8"]


def test_per_component_targets_and_skip() -> None:
    pipe = diffquant.load_pipeline(MODEL, "bnb-nf4(skip=proj_out)@transformer+quanto-int8@text_encoder_2",
                                   device="cpu")
    assert type(pipe.transformer.transformer_blocks[0].attn.to_q.weight).__name__ == "Params4bit"
    assert type(pipe.transformer.proj_out.weight).__name__ == "Parameter"  # skipped
    assert type(pipe.text_encoder_2.encoder.block[0].layer[0].SelfAttention.q.weight).__name__ == \
        "WeightQBytesTensor"
    assert component_stats(pipe)["text_encoder"].quantized_tensors == 0


def test_group_offload_to_disk_and_vae_options_run() -> None:
    pipe = diffquant.load_pipeline(MODEL, "bnb-nf4+offload-group-block(disk)+vae-tiling", device="cpu")
    _image(pipe)


@pytest.mark.parametrize("recipe, fragments", [
    ("torchao-int4wo", ["no CPU layout", "quanto-int4"]),
    ("bnb-nf4+offload-model", ["accelerator", "offload-group-leaf(disk)"]),
    ("fp8-layerwise+offload-group-leaf(stream)", ["CUDA stream", "without (stream)"]),
    ("torchao-fp8dq", ["8.9"]),
    ("torchao-int8wo+offload-group-leaf(disk)", ["safetensors", "no disk"]),
    ("quanto-int8+offload-group-block(disk)", ["crashes", "no disk"]),
    ("gguf-q8_0+offload-group-leaf(disk)", ["NaN"]),
    ("bnb-int8+offload-group-leaf(disk)", ["NaN"]),
    ("torchao-int8wo+compile(fullgraph,mode=max-autotune)", ["segmentation fault", "torchao-fp8wo+compile"]),
])
def test_refused_on_cpu_with_reason(recipe: str, fragments: list[str]) -> None:
    with pytest.raises(BackendUnavailable) as info:
        diffquant.load_pipeline(MODEL, recipe, device="cpu")
    for fragment in fragments:
        assert fragment in str(info.value)


def test_unknown_component_lists_the_pipeline_components() -> None:
    with pytest.raises(DiffquantError) as info:
        diffquant.load_pipeline(MODEL, "bnb-nf4@text_encoder_9", device="cpu")
    assert "text_encoder_2" in str(info.value) and "transformer" in str(info.value)


def test_gguf_on_a_text_encoder_is_refused() -> None:
    with pytest.raises(DiffquantError, match="denoiser only"):
        diffquant.load_pipeline(MODEL, "gguf-q8_0@text_encoder_2", device="cpu")


def test_missing_backend_package_names_the_extra(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("optimum") else real(name, *a))
    with pytest.raises(BackendUnavailable, match=r"diffquant\[quanto\]"):
        diffquant.load_pipeline(MODEL, "quanto-int8", device="cpu")


def test_bad_model_references() -> None:
    with pytest.raises(DiffquantError, match="Unknown zoo model"):
        diffquant.load_pipeline("zoo:tiny-flx", "bf16", device="cpu")
    with pytest.raises(DiffquantError, match="not a diffusers pipeline folder"):
        diffquant.load_pipeline(".", "bf16", device="cpu")
    with pytest.raises(DiffquantError, match="Hub"):
        diffquant.load_pipeline("nobody-here/no-such-model", "bf16", device="cpu")
