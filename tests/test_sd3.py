"""Nothing is FLUX-specific: zoo:tiny-sd3 (MMDiT, two CLIPs + T5) with one recipe per backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffquant
from diffquant.components import large_text_encoder_name, read_components, resolve_model
from diffquant.inspect import component_stats
from diffquant.pipeline import generate

MODEL = "zoo:tiny-sd3"


def _run(recipe: str):
    pipe = diffquant.load_pipeline(MODEL, recipe, device="cpu")
    out = generate(pipe, "a green triangle", seed=1, steps=2)
    assert bool(torch.isfinite(out.latents).all())
    return pipe, np.asarray(out.image).astype(np.float64)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return _run("bf16")[1]


def test_default_targets_are_denoiser_and_t5() -> None:
    components = read_components(resolve_model(MODEL))
    assert large_text_encoder_name(components) == "text_encoder_3"


@pytest.mark.parametrize("recipe, quantized", [
    ("bnb-nf4", ("transformer", "text_encoder_3")),
    ("torchao-int8wo", ("transformer", "text_encoder_3")),
    ("quanto-int8", ("transformer", "text_encoder_3")),
    ("gguf-q8_0", ("transformer",)),
    ("fp8-layerwise", ("transformer",)),
])
def test_one_recipe_per_backend(recipe: str, quantized: tuple[str, ...], reference: np.ndarray) -> None:
    pipe, image = _run(recipe)
    stats = component_stats(pipe)
    for name in ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3"):
        assert (stats[name].quantized_tensors > 0) == (name in quantized), name
    mse = float(((image - reference) ** 2).mean())
    assert mse == 0 or 10 * np.log10(255**2 / mse) > 25
