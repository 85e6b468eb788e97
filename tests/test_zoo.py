"""The zoo builders: offline pipelines that load with the real diffusers classes and generate."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffquant import zoo  # noqa: E402


def _generate(pipe, seed: int = 0, **kwargs) -> "torch.Tensor":
    generator = torch.Generator().manual_seed(seed)
    out = pipe("a red cat on a hill, oil painting", height=64, width=64, num_inference_steps=3,
               generator=generator, output_type="pt", **kwargs)
    return out.images


@pytest.fixture(scope="module")
def tiny_flux() -> "object":
    from diffusers import FluxPipeline

    folder = zoo.ensure_model("tiny-flux")
    return FluxPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)


def test_tiny_flux_loads_in_bf16(tiny_flux) -> None:
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        params = list(getattr(tiny_flux, name).parameters())
        assert params and all(p.dtype == torch.bfloat16 for p in params), name
    n = sum(p.numel() for p in tiny_flux.transformer.parameters())
    assert 5e6 < n < 20e6


def test_tiny_flux_linears_are_quantizable(tiny_flux) -> None:
    """Every transformer/T5 Linear has in_features % 256 == 0 (GGUF K-quants), except FLUX's own
    64-input x_embedder, which is still a multiple of 32/64."""
    for name in ("transformer", "text_encoder_2"):
        for mod_name, mod in getattr(tiny_flux, name).named_modules():
            if isinstance(mod, torch.nn.Linear):
                if mod_name == "x_embedder":
                    assert mod.in_features % 64 == 0
                else:
                    assert mod.in_features % 256 == 0, (name, mod_name, mod.in_features)


def test_tiny_flux_generates_deterministically(tiny_flux) -> None:
    a = _generate(tiny_flux, max_sequence_length=64)
    b = _generate(tiny_flux, max_sequence_length=64)
    assert a.shape == (1, 3, 64, 64)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert a.float().std() > 0.01  # not a flat image


def test_ensure_model_is_cached(tmp_path: Path) -> None:
    first = zoo.ensure_model("tiny-flux")
    assert zoo.ensure_model("tiny-flux") == first
    assert (first / "model_index.json").exists()
