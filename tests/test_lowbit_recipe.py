"""``gguf-*(cpu_kernel)`` on zoo:tiny-flux: the layers really use the kernel on packed blocks, the
images equal diffusers' GGUF path with exact (float32, ggml) dequantization bit for bit and the
stock diffusers path within float rounding (like with like: at float32 compute), the kernel is the
CPU default with an opt-out, and export/reload, group offload and refusals work."""

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


def _run(pipe, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(final latents, 8-bit image) of one seeded generation."""
    out = generate(pipe, PROMPT, seed=seed, steps=3)
    assert bool(torch.isfinite(out.latents).all()), "non-finite latents"
    return out.latents.numpy().astype(np.float64), np.asarray(out.image).astype(np.float64)


def _image(pipe, seed: int = 0) -> np.ndarray:
    return _run(pipe, seed)[1]


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def latent_psnr(a: np.ndarray, ref: np.ndarray) -> float:
    return psnr(a, ref, peak=float(ref.max() - ref.min()))


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
def stock() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """diffusers' own GGUF path, and bf16."""
    return {r.removesuffix("(cpu_kernel=false)"): _run(diffquant.load_pipeline(MODEL, r, device="cpu"))
            for r in ("gguf-q4_k(cpu_kernel=false)", "gguf-q8_0(cpu_kernel=false)", "bf16")}


@pytest.mark.parametrize("qtype", ["q4_k", "q8_0"])
def test_images_equal_ggml_numerics_bit_for_bit(qtype: str, stock, monkeypatch) -> None:
    """With the few-token product off (it sums in another order than the GEMM: see the next test),
    the kernel's weights through torch's GEMM give exactly diffusers' images with ggml's weights."""
    from diffusers.quantizers.gguf.utils import GGUFLinear

    from diffquant.backends.gguf_chunked import chunked_layer_class
    from diffquant.lowbit import linear

    monkeypatch.setattr(linear, "GEMV_MAX_TOKENS", 0)
    pipe = diffquant.load_pipeline(MODEL, f"gguf-{qtype}(cpu_kernel)", device="cpu")
    layers = _kernel_layers(pipe.transformer)
    assert len(layers) >= 10
    assert all(type(m.weight).__name__ == "GGUFParameter" and m.weight.dtype == torch.uint8 for m in layers)
    latents, image = _run(pipe)
    # The same weights as ggml dequantizes them, through diffusers' layer: the same image, bit for bit.
    exact = diffquant.load_pipeline(MODEL, f"gguf-{qtype}(cpu_kernel=false)", device="cpu")
    assert not _kernel_layers(exact.transformer)
    monkeypatch.setattr(GGUFLinear, "forward_native", _exact_forward)
    monkeypatch.setattr(chunked_layer_class(), "forward_native", _exact_forward)  # diffquant's CPU GGUFLinear
    exact_latents, exact_image = _run(exact)
    monkeypatch.undo()
    assert np.array_equal(exact_latents, latents) and np.array_equal(exact_image, image)
    # diffusers' own CPU path dequantizes in float16, then rounds to bf16 (a quarter of Q4_K's bf16
    # weights end one ulp away from ggml's): close, but not equal.
    stock_latents, stock_image = stock[f"gguf-{qtype}"]
    assert not np.array_equal(stock_latents, latents)
    assert psnr(image, stock_image) >= 45.0


@pytest.mark.parametrize("qtype", ["q4_k", "q8_0"])
def test_images_equal_diffusers_like_with_like_at_float32(qtype: str) -> None:
    """The issue's bar (PSNR >= 50 dB against the same GGUF type through diffusers), compared like
    with like: at float32 compute the kernel keeps ggml's float32 values and diffusers' layer its
    float16 ones (its CPU dequantization runs in float16 whatever the compute dtype), with no bf16
    rounding on top; the images then differ only by float rounding (~75-81 dB on tiny-flux). In
    bf16 they are ~49 dB apart (documented in docs/cpu-lowbit.md). Negative control: the same
    comparison against another type (diffusers' Q5_K) is far lower: 50 dB alone would not tell
    Q4_K from Q5_K at float32 here."""
    pipe = diffquant.load_pipeline(MODEL, f"gguf-{qtype}(cpu_kernel)+fp32", device="cpu")
    layers = _kernel_layers(pipe.transformer)
    assert layers and all(m.compute_dtype == torch.float32 for m in layers)
    from diffquant.lowbit import linear

    linear.release_scratch()
    mine = _image(pipe)
    assert torch.float32 in linear._scratch.buffers  # the kernel wrote float32, not diffusers' path
    same = psnr(mine, _image(diffquant.load_pipeline(MODEL, f"gguf-{qtype}(cpu_kernel=false)+fp32", device="cpu")))
    other = psnr(mine, _image(diffquant.load_pipeline(MODEL, "gguf-q5_k(cpu_kernel=false)+fp32", device="cpu")))
    assert same >= 50.0 and same >= other + 15.0, (same, other)


def test_few_token_layers_skip_the_buffer_and_stay_within_rounding(monkeypatch) -> None:
    """The modulation layers (one token per image) take the few-token product; the images it gives
    equal the buffer path's but for float32 summation order: far closer than any quantization."""
    from diffquant.lowbit import linear

    calls: list[int] = []
    real = linear.gemv_into
    monkeypatch.setattr(linear, "gemv_into", lambda *a: calls.append(a[2].shape[0]) or real(*a))
    pipe = diffquant.load_pipeline(MODEL, "gguf-q8_0", device="cpu")
    with_gemv = _run(pipe)
    assert calls and max(calls) <= linear.GEMV_MAX_TOKENS
    monkeypatch.setattr(linear, "GEMV_MAX_TOKENS", 0)
    calls.clear()
    without = _run(pipe)
    assert not calls
    q4 = _run(diffquant.load_pipeline(MODEL, "gguf-q4_k", device="cpu"))
    assert latent_psnr(with_gemv[0], without[0]) >= latent_psnr(q4[0], without[0]) + 20.0


def test_close_to_diffusers_far_closer_than_quantization_error(stock) -> None:
    """On tiny-flux 8-bit images differ by ~48-49 dB for any small change (Q4_K vs bf16 included:
    pixel rounding dominates), so closeness is judged on the final latents, against a negative
    control: diffusers' Q4_K against bf16."""
    mine = _run(diffquant.load_pipeline(MODEL, "gguf-q4_k(cpu_kernel)", device="cpu"))[0]
    to_diffusers = latent_psnr(mine, stock["gguf-q4_k"][0])
    quantization = latent_psnr(stock["gguf-q4_k"][0], stock["bf16"][0])
    assert to_diffusers >= 60.0 and to_diffusers >= quantization + 5.0, (to_diffusers, quantization)


def test_no_weight_is_kept_dequantized(monkeypatch) -> None:
    """One scratch buffer, grown to the largest layer that writes it; the few-token layers (the
    largest here: modulation) write none, so with them the buffer is smaller."""
    from diffquant.inspect import component_stats
    from diffquant.lowbit import linear

    plain = diffquant.load_pipeline(MODEL, "gguf-q4_k(cpu_kernel=false)", device="cpu")
    pipe = diffquant.load_pipeline(MODEL, "gguf-q4_k(cpu_kernel)", device="cpu")
    assert component_stats(pipe)["transformer"].weight_bytes == component_stats(plain)["transformer"].weight_bytes
    biggest = max(m.in_features * m.out_features for m in _kernel_layers(pipe.transformer)
                  if int(m.weight.quant_type) != 30)  # BF16 layers use their own bytes, no scratch
    linear.release_scratch()
    _image(pipe)
    buffers = linear._scratch.buffers
    assert list(buffers) == [torch.bfloat16] and 0 < buffers[torch.bfloat16].numel() < biggest
    monkeypatch.setattr(linear, "GEMV_MAX_TOKENS", 0)
    linear.release_scratch()
    _image(pipe)
    buffers = linear._scratch.buffers
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


def test_kernel_is_the_cpu_default_with_an_opt_out(stock, monkeypatch) -> None:
    """Left out, cpu_kernel is on for CPU (the same image as asking for it); cpu_kernel=false keeps
    diffusers' path (its image); without a compiler the default falls back instead of refusing."""
    from diffquant.lowbit import on_by_default
    from diffquant.recipes import parse_recipe

    assert parse_recipe("gguf-q4_k(cpu_kernel=false)").name == "gguf-q4_k(cpu_kernel=false)"
    assert parse_recipe("gguf-q4_k(cpu_kernel=false)").hash != parse_recipe("gguf-q4_k").hash
    assert parse_recipe("gguf-q4_k(cpu_kernel)").name == "gguf-q4_k(cpu_kernel)"
    assert on_by_default("q4_k_m", "cpu") and on_by_default("q8_0", "cpu")
    from diffquant.lowbit import why_not_here

    assert why_not_here("q4_k_m", "cpu") is None  # a named mix's blocks are kernel types
    assert not on_by_default("q4_k", "cuda") and not on_by_default("bf16", "cpu")
    default = diffquant.load_pipeline(MODEL, "gguf-q4_k", device="cpu")
    assert len(_kernel_layers(default.transformer)) >= 10
    asked = diffquant.load_pipeline(MODEL, "gguf-q4_k(cpu_kernel)", device="cpu")
    assert np.array_equal(_image(default), _image(asked))
    off = diffquant.load_pipeline(MODEL, "gguf-q4_k(cpu_kernel=false)", device="cpu")
    assert not _kernel_layers(off.transformer)
    assert np.array_equal(_image(off), stock["gguf-q4_k"][1])
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    assert not on_by_default("q4_k", "cpu")
    assert not _kernel_layers(diffquant.load_pipeline(MODEL, "gguf-q4_k", device="cpu").transformer)


def test_missing_compiler_is_refused(monkeypatch) -> None:
    from diffquant.lowbit import why_not_here

    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    assert "no C++ compiler" in why_not_here("q4_k", "cpu")
    monkeypatch.delenv("CXX")
    assert why_not_here("q4_k", "cpu") is None
