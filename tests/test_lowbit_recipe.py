"""``gguf-*(cpu_kernel)`` on zoo:tiny-flux: the layers really use the kernel on packed blocks, the
images equal diffusers' GGUF path with exact (float32, ggml) dequantization bit for bit and the
stock diffusers path within float rounding, and export/reload, group offload and refusals work."""

from __future__ import annotations

import numpy as np
import pytest

import diffquant
from diffquant.errors import BackendUnavailable
from diffquant.pipeline import generate

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

MODEL = "zoo:tiny-flux"
PROMPT = "a red circle at the top left"


def _image(pipe, seed: int = 0) -> np.ndarray:
    out = generate(pipe, PROMPT, seed=seed, steps=3)
    assert bool(torch.isfinite(out.latents).all()), "non-finite latents"
    return np.asarray(out.image).astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _exact_forward(self, inputs):
    """diffusers' GGUFLinear with gguf.quants.dequantize (ggml's float32 numerics) instead of its
    float16 torch port."""
    w = self.weight
    values = gguf.quants.dequantize(w.as_tensor().numpy(), gguf.GGMLQuantizationType(int(w.quant_type)))
    bias = self.bias.to(self.compute_dtype) if self.bias is not None else None
    return torch.nn.functional.linear(inputs, torch.from_numpy(values).to(self.compute_dtype), bias)


def _kernel_layers(model) -> list:
    return [m for m in model.modules() if type(m).__name__ == "KernelGGUFLinear"]


@pytest.fixture(scope="module")
def stock() -> dict[str, np.ndarray]:
    return {q: _image(diffquant.load_pipeline(MODEL, f"gguf-{q}", device="cpu")) for q in ("q4_k", "q8_0")}


@pytest.mark.parametrize("qtype", ["q4_k", "q8_0"])
def test_images_equal_ggml_numerics_and_diffusers(qtype: str, stock, monkeypatch) -> None:
    from diffusers.quantizers.gguf.utils import GGUFLinear

    pipe = diffquant.load_pipeline(MODEL, f"gguf-{qtype}(cpu_kernel)", device="cpu")
    layers = _kernel_layers(pipe.transformer)
    assert len(layers) >= 10
    assert all(type(m.weight).__name__ == "GGUFParameter" and m.weight.dtype == torch.uint8 for m in layers)
    mine = _image(pipe)
    # Same weights as ggml dequantizes them: the same image, bit for bit.
    exact = diffquant.load_pipeline(MODEL, f"gguf-{qtype}", device="cpu")
    monkeypatch.setattr(GGUFLinear, "forward_native", _exact_forward)
    assert np.array_equal(_image(exact), mine)
    monkeypatch.undo()
    # diffusers' own CPU path dequantizes in float16, then rounds to bf16 (a quarter of Q4_K's bf16
    # weights differ by one ulp from ggml's): its images differ from ggml-exact ones by 49.0-49.4 dB
    # on this model for Q2_K..Q8_0 (measured), rounding-level changes of the 8-bit pixels.
    close = psnr(mine, stock[qtype])
    assert close >= 45.0, close
    assert psnr(stock[qtype], _image(diffquant.load_pipeline(MODEL, "bf16", device="cpu"))) < close - 10


def test_no_weight_is_kept_dequantized() -> None:
    from diffquant.inspect import component_stats
    from diffquant.lowbit import linear

    plain = diffquant.load_pipeline(MODEL, "gguf-q4_k", device="cpu")
    pipe = diffquant.load_pipeline(MODEL, "gguf-q4_k(cpu_kernel)", device="cpu")
    linear.release_scratch()
    _image(pipe)
    assert component_stats(pipe)["transformer"].weight_bytes == component_stats(plain)["transformer"].weight_bytes
    buffers = linear._scratch.buffers
    biggest = max(m.in_features * m.out_features for m in _kernel_layers(pipe.transformer))
    assert list(buffers) == [torch.bfloat16] and buffers[torch.bfloat16].numel() == biggest


def test_export_reload_keeps_the_kernel(tmp_path) -> None:
    from diffquant.serialize import save_quantized

    pipe = diffquant.load_pipeline(MODEL, "gguf-q5_k(cpu_kernel)", device="cpu")
    before = _image(pipe)
    out = save_quantized(pipe, tmp_path / "export")
    again = diffquant.load_pipeline(str(out), "bf16", device="cpu")
    assert len(_kernel_layers(again.transformer)) == len(_kernel_layers(pipe.transformer))
    assert np.array_equal(_image(again), before)


def test_group_offload_runs_the_same() -> None:
    pipe = diffquant.load_pipeline(MODEL, "gguf-q6_k(cpu_kernel)", device="cpu")
    offloaded = diffquant.load_pipeline(MODEL, "gguf-q6_k(cpu_kernel)+offload-group-leaf", device="cpu")
    assert _kernel_layers(offloaded.transformer)
    assert np.array_equal(_image(offloaded), _image(pipe))


@pytest.mark.parametrize("recipe, device, words", [
    ("gguf-bf16(cpu_kernel)", "cpu", "has none"),
    ("gguf-q4_k(cpu_kernel)", "cuda", "diffusers' own GGUF kernels"),
])
def test_refusals_say_why(recipe: str, device: str, words: str) -> None:
    from diffquant.backends import why_not_here
    from diffquant.recipes import parse_recipe

    reason = why_not_here(parse_recipe(recipe), device)
    assert reason and words in reason and "gguf-" in reason
    if device == "cpu":
        with pytest.raises(BackendUnavailable, match="has none"):
            diffquant.load_pipeline(MODEL, recipe, device="cpu")


def test_missing_compiler_is_refused(monkeypatch) -> None:
    from diffquant.lowbit import why_not_here

    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    assert "no C++ compiler" in why_not_here("q4_k", "cpu")
    monkeypatch.delenv("CXX")
    assert why_not_here("q4_k", "cpu") is None
