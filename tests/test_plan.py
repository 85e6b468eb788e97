"""``diffquant plan``: weight bytes predicted from config files alone equal the bytes of the loaded,
quantized pipeline (``diffquant.inspect.component_stats``) for every recipe that runs here, and
planning FLUX.1-dev's config stays cheap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from diffquant.cli import main
from diffquant.errors import DiffquantError
from diffquant.plan import parse_budget

# Every backend and type that runs on CPU, plus options that change which layers are quantized.
CPU_RECIPES = [
    "bf16", "fp16", "bnb-nf4", "bnb-fp4", "bnb-nf4(double_quant)", "bnb-int8", "bnb-nf4(skip=proj_out|x_embedder)",
    "torchao-int8wo", "torchao-fp8wo", "torchao-intx4wo", "torchao-intx4wo(group_size=64)", "torchao-int8dq",
    "torchao-int8wo(group_size=128)",  # x_embedder's 64 inputs are not a multiple of 128: kept bf16
    "quanto-int8", "quanto-int4", "quanto-int2", "quanto-fp8", "quanto-int4(skip=proj_out)",
    "gguf-q8_0", "gguf-q5_1", "gguf-q4_0", "gguf-q6_k", "gguf-q4_k", "gguf-q2_k", "gguf-q3_k(keep=norm|*.ff.*=Q8_0)",
    "fp8-layerwise", "fp8-layerwise-e5m2", "bnb-nf4@text_encoder+quanto-int8@transformer",
    "bf16+offload-group-leaf(disk)",
]
SD3_RECIPES = ["bf16", "bnb-nf4", "bnb-int8", "torchao-int8wo", "torchao-intx4wo", "quanto-int4", "quanto-fp8",
               "gguf-q4_k", "gguf-q8_0", "fp8-layerwise"]
SLICE_RECIPES = ["bf16", "bnb-nf4", "torchao-int8wo", "quanto-int4", "gguf-q4_k", "fp8-layerwise"]


def _check_weights(model: str, recipe: str) -> None:
    from diffquant.inspect import component_stats
    from diffquant.pipeline import load_pipeline
    from diffquant.plan import plan_model

    plan = plan_model(model, [recipe], device="cpu").recipes[0]
    assert plan.memory is not None and plan.runs_here, plan.why_not
    pipe = load_pipeline(model, recipe, device="cpu")
    measured = component_stats(pipe)
    assert set(measured) == set(plan.components)
    for name, stats in measured.items():
        predicted = plan.components[name].stored_bytes
        assert abs(predicted - stats.weight_bytes) <= 0.01 * stats.weight_bytes, (
            f"{recipe} {name}: predicted {predicted} B, loaded {stats.weight_bytes} B")
    assert plan.memory.weights_bytes == sum(c.stored_bytes for c in plan.components.values())


@pytest.mark.parametrize("recipe", CPU_RECIPES)
def test_weights_match_the_loaded_pipeline_tiny_flux(recipe: str) -> None:
    _check_weights("zoo:tiny-flux", recipe)


@pytest.mark.parametrize("recipe", SD3_RECIPES)
def test_weights_match_the_loaded_pipeline_tiny_sd3(recipe: str) -> None:
    _check_weights("zoo:tiny-sd3", recipe)


@pytest.mark.parametrize("recipe", SD3_RECIPES)
def test_weights_match_the_loaded_pipeline_shapes(recipe: str) -> None:
    _check_weights("zoo:shapes", recipe)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", SLICE_RECIPES)
def test_weights_match_the_loaded_pipeline_flux_dev_slice(recipe: str) -> None:
    _check_weights("zoo:flux-dev-slice", recipe)


def test_quantized_recipes_really_differ() -> None:
    """Negative control: the per-backend counts are not the unquantized size under another name."""
    from diffquant.plan import plan_model

    plans = {r.recipe: r for r in plan_model("zoo:tiny-flux", ["bf16", "bnb-nf4", "quanto-int2", "gguf-q8_0"],
                                             device="cpu").recipes}
    bf16 = plans["bf16"].components["transformer"].stored_bytes
    assert plans["bnb-nf4"].components["transformer"].stored_bytes < 0.35 * bf16
    assert plans["quanto-int2"].components["transformer"].stored_bytes < plans["bnb-nf4"].components["transformer"].stored_bytes
    assert 0.5 * bf16 < plans["gguf-q8_0"].components["transformer"].stored_bytes < bf16
    # GGUF quantizes the denoiser only; bnb also the T5 encoder
    assert plans["gguf-q8_0"].components["text_encoder_2"].quant == ""
    assert plans["bnb-nf4"].components["text_encoder_2"].quant == "bnb-nf4"


def test_flux_dev_plan_is_cheap_and_matches_the_seed_bf16() -> None:
    """FLUX.1-dev's config (zoo:flux-dev-random, never built) planned in a fresh process: under 10 s of
    CPU time (contention-proof, unlike wall time) and 500 MB of peak RSS (VmHWM: ru_maxrss of a child
    forked from this big test process would report the parent's size), and its bf16 weights equal the
    seed's 31.447 GiB."""
    code = (
        "import json, resource, sys, time\n"
        "import torch, diffusers, transformers\n"
        "from diffquant.plan import plan_model\n"
        "t = time.process_time()\n"
        "p = plan_model('zoo:flux-dev-random', ['bf16', 'bnb-nf4', 'gguf-q4_k'], device='cuda')\n"
        "cpu = time.process_time() - t\n"
        "st = {ln.split(':')[0]: ln.split()[1] for ln in open('/proc/self/status') if ln.startswith(('Vm', 'Rss'))}\n"
        "print(json.dumps({'cpu_s': cpu, 'maxrss_kib': int(st['VmHWM']), 'file_kib': int(st['RssFile']),\n"
        "                  'weights': {r.recipe: r.memory.weights_bytes for r in p.recipes}}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["cpu_s"] < 10, result
    # RAM the planning holds: peak RSS less the libraries' mapped file pages, which the kernel shares
    # and drops at will (how many are mapped depends on the page cache: a fresh install maps ~60 MB
    # more of torch's .so files than an old one, with identical anonymous memory)
    assert (result["maxrss_kib"] - result["file_kib"]) * 1024 < 500e6, result
    assert abs(result["weights"]["bf16"] / 2**30 - 31.447) < 0.05  # the seed's table (GiB)
    assert result["weights"]["bnb-nf4"] < 0.4 * result["weights"]["bf16"]


@pytest.mark.parametrize("text,expected", [
    ("16GB", 16 * 2**30), ("16 GiB", 16 * 2**30), ("16gb", 16 * 2**30), ("1.5e10", 15 * 10**9),
    ("900MiB", 900 * 2**20), ("0.5 TB", 2**39), ("2048", 2048),
])
def test_parse_budget(text: str, expected: int) -> None:
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text", ["sixteen", "16 GX", "", "-4GB", "0"])
def test_parse_budget_rejects_with_an_example(text: str) -> None:
    with pytest.raises(DiffquantError, match="e.g. --budget 16GB"):
        parse_budget(text)


def test_plan_cli_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "zoo:tiny-flux", "--device", "cpu", "--recipes", "bf16,bnb-nf4,offload-model"]) == 0
    out = capsys.readouterr().out
    assert "bnb-nf4" in out and "Weights: exact" in out
    assert "cannot run on cpu" in out  # model offload needs an accelerator
    assert main(["plan", "zoo:tiny-flux", "--device", "cpu", "--recipes", "bf16,gguf-q4_k@text_encoder",
                 "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == "diffquant.plan/1"
    bf16, gguf = data["recipes"]
    assert bf16["memory"]["peak_bytes"] > bf16["memory"]["weights_bytes"]
    assert gguf["memory"] is None and "denoiser only" in gguf["why_not"]


def test_plan_unknown_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["plan", "zoo:nope"]) == 2
    assert "Unknown zoo model" in capsys.readouterr().err
    assert main(["plan", str(tmp_path)]) == 2
    assert "not a diffusers pipeline folder" in capsys.readouterr().err


def test_offload_keeps_weights_off_the_device() -> None:
    from diffquant.plan import plan_model

    plans = {r.recipe: r.memory for r in plan_model(
        "zoo:tiny-flux", ["bf16", "bf16+offload-model", "bf16+offload-group-leaf", "bf16+offload-group-leaf(stream)"],
        device="cuda").recipes}
    full = plans["bf16"]
    assert full is not None and full.resident_weights_bytes == full.weights_bytes
    model = plans["bf16+offload-model"]
    assert model is not None and model.resident_weights_bytes == 0 < model.peak_weights_bytes < full.weights_bytes
    leaf, stream = plans["bf16+offload-group-leaf"], plans["bf16+offload-group-leaf(stream)"]
    assert leaf is not None and stream is not None
    assert stream.peak_weights_bytes == 2 * leaf.peak_weights_bytes < model.peak_weights_bytes


def test_activation_model_reads_dit_and_unet_configs() -> None:
    from diffquant.plan.runtime import RunShape, _activations
    from diffquant.plan.weights import ComponentBytes

    vae = {"block_out_channels": [128, 256, 512, 512]}
    shape = RunShape(height=1024, width=1024, steps=28, text_tokens=512)
    unet = ComponentBytes("unet", "UNet2DConditionModel", "", 1, 1, 1)
    sdxl = {"unet": {"attention_head_dim": [5, 10, 20], "num_attention_heads": None,
                     "block_out_channels": [320, 640, 1280]}, "vae": vae}
    acts = _activations(sdxl, {"unet": unet}, shape, 2, "unet")
    assert acts["activations.denoiser"] == 128 * 128 * 1280 * 2 * 20  # latent pixels x widest level
    flux = {"transformer": {"num_attention_heads": 24, "attention_head_dim": 128, "patch_size": 1,
                            "joint_attention_dim": 4096}, "vae": vae}
    tr = ComponentBytes("transformer", "FluxTransformer2DModel", "", 1, 1, 1)
    acts = _activations(flux, {"transformer": tr}, shape, 2, "transformer")
    assert acts["activations.denoiser"] == (64 * 64 + 512) * 3072 * 2 * 20  # packed 2x2 latents + text
    assert acts["activations.vae_decode"] == 1024 * 1024 * 128 * 2 * 6


def test_hub_id_offline_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "nobody-here/no-such-model"]) == 2  # HF_HUB_OFFLINE=1 in the tests
    err = capsys.readouterr().err
    assert "Hugging Face Hub" in err and "local pipeline folder" in err
