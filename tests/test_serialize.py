"""diffquant quantize: save -> reload round trips for every backend, byte-for-byte equal images;
atomic output; refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

import diffquant
from diffquant.errors import DiffquantError
from diffquant.inspect import component_stats
from diffquant.pipeline import generate
from diffquant.serialize import MARKER, save_quantized

MODEL = "zoo:tiny-flux"


def _image(pipe) -> np.ndarray:
    return np.asarray(generate(pipe, "a blue square", seed=3, steps=2).image)


@pytest.mark.parametrize("recipe, fmt", [
    ("torchao-int8wo", "native"),
    ("quanto-int4", "quanto-requantize"),
    ("bnb-nf4(double_quant)", "bnb-prequantized"),
    ("bnb-int8", "bnb-prequantized"),
    ("gguf-q4_k", "gguf-file"),
    ("fp8-layerwise", "layerwise-fp8"),
])
def test_save_reload_round_trip(recipe: str, fmt: str, tmp_path) -> None:
    pipe = diffquant.load_pipeline(MODEL, recipe, device="cpu")
    before = _image(pipe)
    out = save_quantized(pipe, tmp_path / "export")
    meta = json.loads((out / MARKER).read_text())
    assert meta["components"]["transformer"] == fmt
    assert meta["recipe_name"] == diffquant.parse_recipe(recipe).name
    assert meta["versions"]["torch"] and meta["versions"]["diffusers"]
    again = diffquant.load_pipeline(str(out), "bf16", device="cpu")
    assert np.array_equal(_image(again), before)
    original, reloaded = component_stats(pipe)["transformer"], component_stats(again)["transformer"]
    assert reloaded.weight_bytes == original.weight_bytes
    assert type(again.transformer.transformer_blocks[0].attn.to_q.weight) is \
        type(pipe.transformer.transformer_blocks[0].attn.to_q.weight)


def test_torchao_export_loads_with_plain_diffusers(tmp_path) -> None:
    import torch
    from diffusers import FluxTransformer2DModel

    pipe = diffquant.load_pipeline(MODEL, "torchao-int8wo", device="cpu")
    out = save_quantized(pipe, tmp_path / "export")
    model = FluxTransformer2DModel.from_pretrained(out, subfolder="transformer", torch_dtype=torch.bfloat16)
    assert type(model.proj_out.weight).__name__ == "Int8Tensor"


def test_export_refuses_requantization_and_overwrite(tmp_path) -> None:
    pipe = diffquant.load_pipeline(MODEL, "quanto-int8", device="cpu")
    out = save_quantized(pipe, tmp_path / "export")
    with pytest.raises(DiffquantError, match="already quantized"):
        diffquant.load_pipeline(str(out), "bnb-nf4", device="cpu")
    with pytest.raises(DiffquantError, match="not empty"):
        save_quantized(pipe, out)


def test_failed_save_leaves_nothing(tmp_path, monkeypatch) -> None:
    from diffquant import serialize

    pipe = diffquant.load_pipeline(MODEL, "quanto-int8", device="cpu")
    calls = {"n": 0}
    real = serialize._save_component

    def fail_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(serialize, "_save_component", fail_on_third)
    with pytest.raises(OSError, match="injected"):
        save_quantized(pipe, tmp_path / "export")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary twin


def test_quantized_weights_cache(tmp_path) -> None:
    from diffquant.pipeline import load_info

    first = diffquant.load_pipeline(MODEL, "quanto-int8+vae-tiling", device="cpu", quant_cache_dir=tmp_path)
    assert not load_info(first).quant_cache_used
    (cached,) = (tmp_path / "pipelines").iterdir()
    assert (cached / "vae").is_symlink()  # unquantized components point at the source model
    second = diffquant.load_pipeline(MODEL, "quanto-int8+vae-tiling", device="cpu", quant_cache_dir=tmp_path)
    info = load_info(second)
    assert info.quant_cache_used and info.recipe.name == "quanto-int8+vae-tiling"
    assert type(second.transformer.proj_out.weight).__name__ == "WeightQBytesTensor"
    # int8 data in allocations of their own (torch's int8 CPU matmul crashed on safetensors' 8-byte
    # aligned file mapping at flux-dev-slice's sizes)
    qdata = [m.weight._data for m in second.transformer.modules()
             if type(getattr(m, "weight", None)).__name__ == "WeightQBytesTensor"]
    assert qdata and all(d.data_ptr() % 64 == 0 for d in qdata)
    assert np.array_equal(_image(first), _image(second))
    # A different recipe is a different cache entry.
    third = diffquant.load_pipeline(MODEL, "quanto-int4", device="cpu", quant_cache_dir=tmp_path)
    assert not load_info(third).quant_cache_used
    assert len(list((tmp_path / "pipelines").iterdir())) == 2


def test_gguf_cache_reports_hits(tmp_path) -> None:
    from diffquant.pipeline import load_info

    assert not load_info(diffquant.load_pipeline(MODEL, "gguf-q5_k", device="cpu",
                                                 quant_cache_dir=tmp_path)).quant_cache_used
    assert load_info(diffquant.load_pipeline(MODEL, "gguf-q5_k", device="cpu",
                                             quant_cache_dir=tmp_path)).quant_cache_used
