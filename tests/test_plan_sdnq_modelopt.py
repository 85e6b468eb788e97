"""``diffquant plan`` for SDNQ and ModelOpt: SDNQ's predicted bytes equal the loaded pipeline's to the
byte (its own quantizer runs on the meta-device model); ModelOpt's follow its documented storage
formats, checked against bytes computed by hand for single layers (it runs on CUDA only)."""

from __future__ import annotations

import os

import pytest

# SDNQ compiles its dequantize step on first use: minutes on a busy CPU, irrelevant to bytes.
os.environ.setdefault("SDNQ_USE_TORCH_COMPILE", "0")

# Every SDNQ weight type, the quantized matmul (row-wise groups for 8-bit types), a skip list, text
# encoders (transformers' loader path) and a mix with another backend.
SDNQ_RECIPES = [
    "sdnq-int8", "sdnq-uint4", "sdnq-int4", "sdnq-int6", "sdnq-fp8", "sdnq-fp6", "sdnq-fp4",
    "sdnq-int8(matmul)", "sdnq-fp8(matmul)", "sdnq-uint4(skip=proj_out|ff)",
    "sdnq-int8@text_encoder_2", "sdnq-uint4@text_encoder", "bnb-nf4@text_encoder+sdnq-fp6@transformer",
]


def _plan_and_load(model: str, recipe: str) -> tuple[dict[str, int], dict[str, int]]:
    from diffquant.inspect import component_stats
    from diffquant.pipeline import load_pipeline
    from diffquant.plan import plan_model

    plan = plan_model(model, [recipe], device="cpu").recipes[0]
    assert plan.memory is not None and plan.runs_here, plan.why_not
    loaded = component_stats(load_pipeline(model, recipe, device="cpu"))
    return ({n: c.stored_bytes for n, c in plan.components.items()},
            {n: s.weight_bytes for n, s in loaded.items()})


@pytest.mark.parametrize("recipe", SDNQ_RECIPES)
def test_sdnq_plan_matches_the_loaded_pipeline_to_the_byte(recipe: str) -> None:
    pytest.importorskip("sdnq")
    predicted, loaded = _plan_and_load("zoo:tiny-flux", recipe)
    assert predicted == loaded


@pytest.mark.parametrize("recipe", ["sdnq-int8", "sdnq-uint4(matmul)"])
def test_sdnq_plan_matches_on_sd3_shapes(recipe: str) -> None:
    pytest.importorskip("sdnq")
    predicted, loaded = _plan_and_load("zoo:shapes", recipe)
    assert predicted == loaded


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["sdnq-int8", "sdnq-uint4", "sdnq-fp4", "sdnq-int8(matmul)"])
def test_sdnq_plan_matches_flux_dev_slice(recipe: str) -> None:
    pytest.importorskip("sdnq")
    predicted, loaded = _plan_and_load("zoo:flux-dev-slice", recipe)
    assert predicted == loaded


def test_sdnq_types_order_by_bits() -> None:
    """A negative control for the byte model: fewer bits store fewer bytes, and skipping layers more."""
    pytest.importorskip("sdnq")
    from diffquant.plan import plan_model

    recipes = ["bf16", "sdnq-int8", "sdnq-int6", "sdnq-uint4", "sdnq-int4", "sdnq-int4(skip=ff)"]
    got = {r.recipe: r.components["transformer"].stored_bytes for r in plan_model("zoo:tiny-flux", recipes,
                                                                                  device="cpu").recipes}
    assert got["bf16"] > got["sdnq-int8"] > got["sdnq-int6"] > got["sdnq-uint4"] > got["sdnq-int4"]
    assert got["sdnq-int4(skip=ff)"] > got["sdnq-int4"]


# -- ModelOpt: no GPU here, so hand-computed bytes of a config-only (meta-device) model ------------

def _meta_model():
    import torch
    from accelerate import init_empty_weights

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.to_q = torch.nn.Linear(3072, 3072)  # quantized
            self.proj_out = torch.nn.Linear(3072, 64)  # ModelOpt's default "*proj_out.*": kept
            self.norm = torch.nn.LayerNorm(3072)  # not a quantized type: kept
            self.conv = torch.nn.Conv2d(16, 32, 2)  # quantized by FP8/INT8 only

    with init_empty_weights(include_buffers=True):
        model = Block()
    return model.to(torch.bfloat16)


# Bytes outside to_q (and outside the conv for the block formats), all bf16: proj_out 3072*64 + 64,
# norm 2*3072, and the conv's 32*16*2*2 + 32 where it is kept.
KEPT = 2 * (3072 * 64 + 64 + 2 * 3072)
CONV = 2 * (32 * 16 * 2 * 2 + 32)
BIAS = 2 * 3072  # to_q's bias stays bf16
N = 3072 * 3072

# Each by hand from the format: values + scales + (FP8/INT8/NVFP4: float32 tensor scale) + float32 amax.
EXPECTED = {
    # 1 byte per value, float32 scale, float32 amax; the conv too: 2048 values + 8, bias bf16.
    "fp8": KEPT + BIAS + N + 8 + (32 * 16 * 4 + 8 + 2 * 32),
    "int8": KEPT + BIAS + N + 8 + (32 * 16 * 4 + 8 + 2 * 32),
    # 73728 blocks of 128: 4718592 packed bytes + a bf16 scale each; conv left bf16.
    "int4": KEPT + CONV + BIAS + N // 2 + 73728 * 2 + 4,
    # same blocks: int8 scale per block, 9216 scale blocks of 8 with a bf16 scale each, a bf16 zero point.
    "nf4": KEPT + CONV + BIAS + N // 2 + 73728 + 9216 * 2 + 2 + 4,
    # 3072 rows x 192 blocks of 16: 8 packed bytes + 1 fp8 scale per block, fp32 global scale.
    "nvfp4": KEPT + CONV + BIAS + 3072 * 192 * 9 + 4 + 4,
}


@pytest.mark.parametrize("qtype", sorted(EXPECTED))
def test_modelopt_bytes_by_hand(qtype: str) -> None:
    from diffquant.backends import get_backend
    from diffquant.backends.base import ComponentContext
    from diffquant.recipes import parse_recipe

    spec = parse_recipe(f"modelopt-{qtype}").quant[0]
    ctx = ComponentContext("transformer", "diffusers", "Block", "", None, "cuda", True)
    assert get_backend("modelopt").stored_bytes(spec, _meta_model(), ctx) == EXPECTED[qtype]


def test_modelopt_skip_keeps_a_layer_in_bf16() -> None:
    from diffquant.backends import get_backend
    from diffquant.backends.base import ComponentContext
    from diffquant.recipes import parse_recipe

    spec = parse_recipe("modelopt-nvfp4(skip=to_q)").quant[0]
    ctx = ComponentContext("transformer", "diffusers", "Block", "", None, "cuda", True)
    assert get_backend("modelopt").stored_bytes(spec, _meta_model(), ctx) == KEPT + CONV + BIAS + 2 * N


def test_modelopt_plans_for_a_gpu_before_anything_is_downloaded() -> None:
    """On a CUDA plan (configs only) every ModelOpt type gets exact-format bytes; the 4-bit types
    store well under FP8, which stores about half of bf16 for the quantized layers."""
    from diffquant.plan import plan_model

    recipes = ["bf16", "modelopt-fp8", "modelopt-int8", "modelopt-int4", "modelopt-nf4", "modelopt-nvfp4"]
    plans = {r.recipe: r for r in plan_model("zoo:tiny-flux", recipes, device="cuda").recipes}
    got = {name: plan.components["transformer"].stored_bytes for name, plan in plans.items()}
    assert all(plan.memory is not None for plan in plans.values())
    assert got["bf16"] > got["modelopt-fp8"] == got["modelopt-int8"] > got["modelopt-nvfp4"] > got["modelopt-int4"]
    assert got["modelopt-int4"] > got["modelopt-nf4"]
    # text encoders are not ModelOpt's: unchanged
    assert plans["modelopt-int4"].components["text_encoder_2"].stored_bytes == \
        plans["bf16"].components["text_encoder_2"].stored_bytes


def test_modelopt_block_kwargs_are_diffusers_config_arguments() -> None:
    """The block settings that make ModelOpt really compress 4-bit weights are NVIDIAModelOptConfig
    arguments (its constructor imports modelopt, absent here, so its signature is checked)."""
    import inspect

    import diffusers

    from diffquant.backends import get_backend

    params = inspect.signature(diffusers.NVIDIAModelOptConfig.__init__).parameters
    kwargs = get_backend("modelopt").BLOCK_KWARGS
    assert set(kwargs) == {"int4", "nf4", "nvfp4"}
    assert all(set(k) <= set(params) for k in kwargs.values())
