"""Every backend that runs on CPU: export → the card's plain diffusers/transformers lines (run as
written) → the same image as the in-memory quantized pipeline; ``diffquant.load_pipeline(DIR)`` the
same; no pickle in any export; where the card says plain diffusers cannot load, it really cannot."""

from __future__ import annotations

import numpy as np
import pytest

import diffquant
from diffquant.export.card import validate_card
from diffquant.export.safety import pickle_files
from diffquant.export.usage import plain_code, plain_support, read_export
from diffquant.pipeline import generate
from diffquant.serialize import save_quantized

MODEL = "zoo:tiny-flux"


def _image(pipe) -> np.ndarray:
    # Explicit settings: a plain diffusers pipeline knows none of diffquant's model defaults.
    return np.asarray(generate(pipe, "a blue square", seed=3, steps=2, height=64, width=64,
                               guidance_scale=3.5).image)


@pytest.mark.parametrize("recipe, plain_on_cpu", [
    ("bnb-nf4", False),  # diffusers' bnb loader needs a GPU
    ("bnb-int8", False),
    ("torchao-int8wo", True),
    ("quanto-int8", True),
    ("quanto-int4", True),
    # cpu_kernel=false: diffusers' own dequantization, as the plain lines run it (bit-identical); the
    # CPU default (diffquant's kernel, ggml's numerics) is close, not identical: test_lowbit_recipe.py
    ("gguf-q4_k(cpu_kernel=false)", True),
    ("gguf-q8_0(cpu_kernel=false)", True),
    ("fp8-layerwise", True),
])
def test_export_loads_where_the_card_says(recipe: str, plain_on_cpu: bool, tmp_path) -> None:
    pipe = diffquant.load_pipeline(MODEL, recipe, device="cpu")
    before = _image(pipe)
    out = save_quantized(pipe, tmp_path / "export")
    assert pickle_files(out) == []
    assert not list(out.rglob("*.bin"))
    export = read_export(out)
    card = validate_card(out / "README.md")
    code = plain_code(export, "cpu", folder=str(out))
    assert (code is not None) == plain_on_cpu
    if code is not None:
        assert plain_code(export, "cpu") in card.text  # the card shows exactly these lines
        namespace: dict = {}
        exec(code, namespace)  # noqa: S102 - the card's own lines, run as a user would
        assert "diffquant" not in repr(type(namespace["pipe"].transformer))
        assert np.array_equal(_image(namespace["pipe"]), before)
    else:
        assert plain_code(export, "cuda") in card.text and "CUDA GPU only" in card.text
    again = diffquant.load_pipeline(str(out), device="cpu")
    assert np.array_equal(_image(again), before)


def test_bnb_export_plain_libraries(tmp_path) -> None:
    """transformers loads the packed bitsandbytes text encoder on CPU (the same tensors; its output is
    far closer to diffquant's than the unquantized encoder's is); diffusers refuses the transformer on
    CPU with the reason the card gives."""
    import torch
    import transformers
    from diffusers import FluxTransformer2DModel

    pipe = diffquant.load_pipeline(MODEL, "bnb-nf4", device="cpu")
    out = save_quantized(pipe, tmp_path / "export")
    supports = {c.name: plain_support(c) for c in read_export(out).components}
    assert supports["text_encoder_2"].cpu and not supports["transformer"].cpu and supports["transformer"].cuda
    t5 = transformers.T5EncoderModel.from_pretrained(out / "text_encoder_2", torch_dtype=torch.bfloat16)
    assert type(t5.encoder.block[0].layer[0].SelfAttention.q).__name__ == "Linear4bit"
    ids = torch.tensor([[3, 4, 5, 6, 1]])
    ours = dict(pipe.text_encoder_2.state_dict())
    assert all(torch.equal(v, ours[k]) for k, v in t5.state_dict().items())
    bf16 = diffquant.load_pipeline(MODEL, "bf16", device="cpu").text_encoder_2
    with torch.no_grad():
        mine, plain, full = (m(ids).last_hidden_state.float() for m in (pipe.text_encoder_2, t5, bf16))
    # Kernel noise, not a different model: well inside nf4's own distance from bf16.
    assert (plain - mine).abs().max() < 0.25 * (full - mine).abs().max()
    with pytest.raises(RuntimeError, match="GPU"):
        FluxTransformer2DModel.from_pretrained(out, subfolder="transformer", torch_dtype=torch.bfloat16)
    assert "GPU" in supports["transformer"].why_not


def test_sdnq_export_is_safe_reloads_exactly_and_says_plain_loading_is_close(tmp_path) -> None:
    """SDNQ (added beside the exports): safetensors only; diffquant reloads it to identical images;
    plain diffusers loads it too but rounds its scales, which the card states."""
    pytest.importorskip("sdnq")
    pipe = diffquant.load_pipeline(MODEL, "sdnq-int8", device="cpu")
    out = tmp_path / "sdnq"
    save_quantized(pipe, out)
    assert pickle_files(out) == []
    export = read_export(out)
    support = {c.name: plain_support(c) for c in export.quantized()}
    assert support and all(s.cpu and "not bit-identical" in s.how for s in support.values())
    again = diffquant.load_pipeline(str(out), device="cpu")
    assert np.array_equal(_image(pipe), _image(again))
