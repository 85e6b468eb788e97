"""The zoo builders: offline pipelines that load with the real diffusers classes and generate."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from diffquant import zoo

PROMPT = "a red cat on a hill, oil painting"


def _generate(pipe: Any, seed: int = 0) -> Any:
    generator = torch.Generator().manual_seed(seed)
    out = pipe(PROMPT, height=64, width=64, num_inference_steps=3, generator=generator,
               output_type="pt")
    return out.images


def _params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_linears(model: Any, name: str, allowed: dict[str, int] | None = None) -> None:
    """Every Linear's in_features is a multiple of 256 (GGUF K-quant rows), except the ``allowed``
    ones, which must be a multiple of the given number."""
    allowed = allowed or {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            multiple = allowed.get(mod_name, 256)
            assert mod.in_features % multiple == 0, (name, mod_name, mod.in_features)


# --- tiny-flux -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_flux() -> Any:
    from diffusers import FluxPipeline

    folder = zoo.ensure_model("tiny-flux")
    return FluxPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)


def test_tiny_flux_loads_in_bf16(tiny_flux: Any) -> None:
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        params = list(getattr(tiny_flux, name).parameters())
        assert params and all(p.dtype == torch.bfloat16 for p in params), name
    assert 5e6 < _params(tiny_flux.transformer) < 20e6
    assert tiny_flux.transformer.config.in_channels == 4 * tiny_flux.vae.config.latent_channels
    assert tiny_flux.tokenizer.model_max_length == 77
    assert tiny_flux.tokenizer_2.model_max_length == 512


def test_tiny_flux_linears_are_quantizable(tiny_flux: Any) -> None:
    # x_embedder has FLUX.1's own 64 inputs: fine for Q8_0/Q4_x (32) and bnb/torchao/quanto (64).
    _check_linears(tiny_flux.transformer, "transformer", {"x_embedder": 64})
    _check_linears(tiny_flux.text_encoder_2, "text_encoder_2")


def test_tiny_flux_generates_deterministically(tiny_flux: Any) -> None:
    a, b = _generate(tiny_flux), _generate(tiny_flux)
    assert a.shape == (1, 3, 64, 64)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert a.float().std() > 0.01  # not a flat image
    assert not torch.equal(a, _generate(tiny_flux, seed=1))


# --- tiny-sd3 --------------------------------------------------------------------------------

def test_tiny_sd3_builds_loads_and_generates() -> None:
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(zoo.ensure_model("tiny-sd3"),
                                                    torch_dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in pipe.transformer.parameters())
    _check_linears(pipe.transformer, "transformer")
    _check_linears(pipe.text_encoder_3, "text_encoder_3")
    a, b = _generate(pipe), _generate(pipe)
    assert a.shape == (1, 3, 64, 64)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)


# --- FLUX.1-dev sizes (on the meta device: no memory, a few seconds) --------------------------

def _meta(spec_name: str) -> dict[str, Any]:
    from diffquant.zoo import flux

    return flux.meta_components(getattr(flux, spec_name)(), (1000, 1000))


def test_flux_dev_slice_has_flux_dev_widths() -> None:
    models = _meta("dev_slice_spec")
    t = models["transformer"].config
    assert (t.num_attention_heads, t.attention_head_dim) == (24, 128)
    assert tuple(t.axes_dims_rope) == (16, 56, 56)
    assert (t.joint_attention_dim, t.pooled_projection_dim, t.in_channels) == (4096, 768, 64)
    assert t.guidance_embeds and t.patch_size == 1
    assert (t.num_layers, t.num_single_layers) == (1, 2)
    blocks = models["transformer"]
    assert tuple(blocks.transformer_blocks[0].ff.net[0].proj.weight.shape) == (12288, 3072)
    assert tuple(blocks.single_transformer_blocks[0].proj_out.weight.shape) == (3072, 15360)
    assert tuple(blocks.context_embedder.weight.shape) == (3072, 4096)
    t5 = models["text_encoder_2"].config
    assert (t5.d_model, t5.d_ff, t5.num_heads, t5.d_kv, t5.num_layers) == (4096, 10240, 64, 64, 1)
    assert t5.feed_forward_proj == "gated-gelu"
    clip = models["text_encoder"].config
    assert (clip.hidden_size, clip.intermediate_size, clip.num_attention_heads) == (768, 3072, 12)
    assert clip.eos_token_id == 1
    vae = models["vae"].config
    assert tuple(vae.block_out_channels) == (128, 256, 512, 512)
    assert (vae.latent_channels, vae.scaling_factor, vae.shift_factor) == (16, 0.3611, 0.1159)
    assert 0.9e9 < sum(_params(m) for m in models.values()) < 1.05e9


def test_flux_dev_random_parameter_counts() -> None:
    models = _meta("dev_full_spec")
    assert all(p.device.type == "meta" for m in models.values() for p in m.parameters())
    t = models["transformer"].config
    assert (t.num_layers, t.num_single_layers) == (19, 38)
    assert _params(models["transformer"]) == pytest.approx(11.90e9, rel=0.01)
    assert _params(models["text_encoder_2"]) == pytest.approx(4.76e9, rel=0.01)
    assert _params(models["text_encoder"]) == pytest.approx(123e6, rel=0.01)
    assert _params(models["vae"]) == pytest.approx(83.8e6, rel=0.01)


@pytest.mark.slow
def test_flux_dev_slice_builds_and_generates() -> None:
    """~30 s to build (2 GB) and ~10 s to generate on 2 CPU cores."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(zoo.ensure_model("flux-dev-slice"),
                                        torch_dtype=torch.bfloat16)
    assert pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim \
        == 3072
    generator = torch.Generator().manual_seed(0)
    image = pipe(PROMPT, height=64, width=64, num_inference_steps=2, max_sequence_length=32,
                 generator=generator, output_type="pt").images
    assert torch.isfinite(image).all()


# --- tokenizers ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["clip", "t5"])
def test_tokenizers_round_trip_and_are_deterministic(kind: str, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from diffquant.zoo import tokenizers

    make = tokenizers.clip_like_tokenizer if kind == "clip" else tokenizers.t5_like_tokenizer
    tok = make()
    assert tok.backend_tokenizer.to_str() == make().backend_tokenizer.to_str()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "A Golden Owl by the lake, naïve 日本 art #42"
    ids = tok(text).input_ids
    assert loaded(text).input_ids == ids
    expected = text.lower() if kind == "clip" else text
    assert loaded.decode(ids, skip_special_tokens=True) == expected
    if kind == "clip":
        assert (ids[0], ids[-1], loaded.pad_token_id, loaded.model_max_length) == (0, 1, 1, 77)
    else:
        assert (ids[-1], loaded.pad_token_id, loaded.unk_token_id) == (1, 0, 2)
        assert loaded.model_max_length == 512
    padded = loaded(text, padding="max_length", max_length=loaded.model_max_length, truncation=True)
    assert len(padded.input_ids) == loaded.model_max_length


# --- ensure_model ----------------------------------------------------------------------------

def _fake_entry(monkeypatch: pytest.MonkeyPatch, name: str, builder: Any) -> None:
    module = types.ModuleType("dq_fake_zoo_builders")
    module.build = builder  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    zoo.list_entries()  # load the built-in entries first
    monkeypatch.setitem(zoo.ZOO, name, zoo.ZooEntry(
        name=name, description="test", builder=f"{module.__name__}:build", pipeline_class="X"))


def test_ensure_model_leaves_nothing_when_the_builder_fails(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken(folder: Path) -> None:
        (folder / "model_index.json").write_text("{}")  # half-written, then a crash
        raise RuntimeError("boom")

    _fake_entry(monkeypatch, "fake-broken", broken)
    with pytest.raises(RuntimeError, match="boom"):
        zoo.ensure_model("fake-broken", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_ensure_model_builds_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[Path] = []

    def build(folder: Path) -> None:
        calls.append(folder)
        (folder / "model_index.json").write_text("{}")

    _fake_entry(monkeypatch, "fake-ok", build)
    first = zoo.ensure_model("fake-ok", cache_dir=tmp_path)
    assert zoo.ensure_model("fake-ok", cache_dir=tmp_path) == first
    assert len(calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == [first.name]
