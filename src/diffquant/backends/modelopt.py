"""NVIDIA ModelOpt (``nvidia-modelopt``) weight quantization through diffusers'
``NVIDIAModelOptConfig``: FP8, INT8, INT4, NF4 and NVFP4, for the denoiser only (transformers has
no ModelOpt config for text encoders).

ModelOpt compresses weights for NVIDIA GPUs; diffquant refuses it before loading on CPU, and on
GPUs without the number format in hardware (FP8: compute capability 8.9+, NVFP4: 10.0+ Blackwell),
naming the nearest recipe that runs there. The package is an optional extra (``diffquant[modelopt]``),
never part of the default install.
"""

from __future__ import annotations

from typing import Any

from diffquant.backends.base import (
    ComponentContext,
    MemoryTraits,
    SaveTarget,
    config_only,
    no_cached_file,
    no_compile_issue,
    no_disk_offload_issue,
    no_notes,
    no_saved_formats,
    nothing_after_load,
    nothing_before_load,
    package_missing,
    per_module_unsupported,
    plain_as_native,
    same_layer,
)
from diffquant.errors import DiffquantError
from diffquant.recipes.model import QuantSpec

name = "modelopt"
packages = ("nvidia-modelopt",)  # whose versions a result depends on
cache_quantized = False
memory = MemoryTraits()
formats: dict[str, str] = {}
load_component = config_only
notes = no_notes
disk_offload_breaks = no_disk_offload_issue  # not measured: it runs on CUDA only, where disk offload is rare
compile_breaks = no_compile_issue
cached_file = no_cached_file
before_load = nothing_before_load
after_load = nothing_after_load
load_saved = no_saved_formats
plain_load = plain_as_native
quantize_linear = keeps_precise = keep_precise = upgrade_type = per_module_unsupported(name)

QUANT_TYPES = {"fp8": "FP8", "int8": "INT8", "int4": "INT4", "nf4": "NF4", "nvfp4": "NVFP4"}
# The least CUDA compute capability whose tensor cores hold the format.
MIN_CAPABILITY = {"fp8": (8, 9), "nvfp4": (10, 0)}
# What runs on a CPU instead, closest in format and bits.
CPU_NEAREST = {"fp8": "sdnq-fp8 (or torchao-fp8wo)", "int8": "sdnq-int8 (or torchao-int8wo)",
               "int4": "sdnq-int4", "nf4": "bnb-nf4", "nvfp4": "sdnq-fp4"}


def why_not_here(spec: QuantSpec, device: str) -> str | None:
    if device == "cpu":
        return (f"NVIDIA ModelOpt {QUANT_TYPES[spec.qtype]} compresses weights for NVIDIA GPUs "
                "(diffquant runs it on CUDA only). "
                f"Nearest that runs here: {CPU_NEAREST[spec.qtype]}.")
    missing = package_missing("modelopt")
    if missing:
        return missing
    need = MIN_CAPABILITY.get(spec.qtype)
    if need is not None:
        import torch

        # Judging for CUDA on a machine without one (diffquant recipes --device cuda): can't check.
        if torch.cuda.is_available() and torch.cuda.get_device_capability() < need:
            return hardware_reason(spec.qtype, torch.cuda.get_device_capability())
    return None


def hardware_reason(qtype: str, capability: tuple[int, int]) -> str:
    """Why ``qtype`` can't run on a GPU of ``capability``, with the nearest ModelOpt type that does."""
    need = MIN_CAPABILITY[qtype]
    fp8_ok = capability >= MIN_CAPABILITY["fp8"]
    nearest = ("modelopt-fp8" if qtype == "nvfp4" and fp8_ok
               else "modelopt-int4 (or sdnq-fp4)" if qtype == "nvfp4" else "modelopt-int8 (or torchao-int8wo)")
    arch = "Blackwell" if qtype == "nvfp4" else "Ada/Hopper"
    return (f"ModelOpt {QUANT_TYPES[qtype]} needs a GPU with compute capability >= {need[0]}.{need[1]} "
            f"({arch}); this one has {capability[0]}.{capability[1]}. Nearest that runs here: {nearest}.")


def load_config(spec: QuantSpec, ctx: ComponentContext) -> Any:
    if ctx.library != "diffusers":
        raise DiffquantError(f"ModelOpt cannot quantize {ctx.name} ({ctx.class_name}): transformers has no "
                             "ModelOpt config, diffusers' NVIDIAModelOptConfig covers diffusers models only.",
                             hint=f"quantize the denoiser only (modelopt-{spec.qtype} without @{ctx.name}), "
                                  f"and the text encoder with e.g. sdnq-int8@{ctx.name}")
    import diffusers

    return diffusers.NVIDIAModelOptConfig(quant_type=QUANT_TYPES[spec.qtype], weight_only=True,
                                          modules_to_not_convert=list(spec.skip_modules) or None,
                                          **BLOCK_KWARGS.get(spec.qtype, {}))


# ModelOpt compresses (real-quantizes) 4-bit weights only block-wise (TensorQuantizer._is_real_quantize_support:
# 4-bit and (2, 1) formats need block_sizes); without them the weights stay in bf16 as fake quantization.
# Block sizes as diffusers' own GPU tests use them (tests/quantization/modelopt/test_modelopt.py: INT4 and
# NF4 blocks of 128, NF4 scales double-quantized in blocks of 8, convolutions left out), NVFP4 in its
# defined blocks of 16 (scale_bits (4, 3) selects the NVFP4 path; its scale block size is not used).
BLOCK_KWARGS: dict[str, dict[str, Any]] = {
    "int4": {"channel_quantize": -1, "block_quantize": 128, "disable_conv_quantization": True},
    "nf4": {"channel_quantize": -1, "block_quantize": 128, "scale_channel_quantize": -1,
            "scale_block_quantize": 8, "disable_conv_quantization": True},
    "nvfp4": {"channel_quantize": -1, "block_quantize": 16, "scale_channel_quantize": -1,
              "scale_block_quantize": 8, "disable_conv_quantization": True},
}


def save(component: Any, spec: QuantSpec, target: SaveTarget) -> str:
    raise DiffquantError("diffquant cannot export ModelOpt components yet (no save/reload round trip has been "
                         "checked on a GPU).", hint="export another recipe, or load the model with this one directly")


# -- diffquant plan: bytes from ModelOpt's documented storage formats -----------------------------
# Sources (ModelOpt's real-quantized tensors, modelopt/torch/quantization/qtensor/*.py and
# nn/modules/tensor_quantizer.py `_real_quantize`, NVIDIA/TensorRT-Model-Optimizer; the NVFP4 format:
# NVIDIA's "Introducing NVFP4" blog, E2M1 values, one E4M3 scale per 16, one FP32 tensor scale):
# - FP8: float8_e4m3fn values (1 byte) + one float32 per-tensor scale (amax / 448);
# - INT8: int8 values + one float32 per-tensor scale;
# - INT4: values packed two per byte over the flattened weight padded to whole blocks, one scale per
#   block in the weight's dtype (INT4QTensor.quantize);
# - NF4: packed like INT4; block scales double-quantized to int8 (padded to whole scale blocks), one
#   scale per scale block and one zero point in the weight's dtype (NF4QTensor.double_quantization);
# - NVFP4: E2M1 values packed two per byte, each row padded to whole blocks of 16, one float8_e4m3fn
#   scale per block and one float32 global scale (NVFP4QTensor.quantize).
# Every quantized layer also keeps its calibrated amax: counted as one float32 (per-tensor max
# calibration). Not checked against a loaded model (ModelOpt runs on CUDA only; diffquant bench on a
# GPU measures the truth).
AMAX_BYTES = 4
# Quantizer-name patterns ModelOpt leaves disabled (modelopt.torch.quantization.config.
# _default_disabled_quantizer_cfg), matched against "<module>.weight_quantizer". FLUX's proj_out
# layers match "*proj_out.*" and stay in bf16.
DEFAULT_DISABLED = ("*lm_head*", "*proj_out.*", "*block_sparse_moe.gate*", "*router*", "*mlp.gate.*",
                    "*mlp.shared_expert_gate.*", "*linear_attn.conv1d*", "*mixer.conv1d*",
                    "*output_layer*", "output.*")


def weight_bytes(qtype: str, shape: tuple[int, ...], dtype_bytes: int) -> int:
    """Bytes ModelOpt stores for one weight of ``shape`` compressed as ``qtype`` (bias not included;
    ``dtype_bytes``: the weight's dtype before quantizing, which INT4/NF4 scales keep)."""
    n = 1
    for dim in shape:
        n *= dim
    if qtype in ("fp8", "int8"):
        return n + 4 + AMAX_BYTES
    if qtype == "nvfp4":
        rows, blocks = n // shape[-1], -(-shape[-1] // 16)
        return rows * blocks * 8 + rows * blocks + 4 + AMAX_BYTES
    block = BLOCK_KWARGS[qtype]["block_quantize"]
    blocks = -(-n // block)
    packed = blocks * block // 2
    if qtype == "int4":
        return packed + blocks * dtype_bytes + AMAX_BYTES
    scale_block = BLOCK_KWARGS[qtype]["scale_block_quantize"]
    scale_blocks = -(-blocks // scale_block)
    return packed + scale_blocks * scale_block + scale_blocks * dtype_bytes + dtype_bytes + AMAX_BYTES


def stored_bytes(spec: QuantSpec, model: Any, ctx: ComponentContext) -> int:
    """Bytes this component holds once loaded with ``spec`` on a GPU: ModelOpt's quantized module
    types (Linear; convolutions too for FP8/INT8, left out of the block formats), minus its default
    disabled patterns, ``skip`` and ``_keep_in_fp32_modules`` (diffusers disables ``*name*``)."""
    from fnmatch import fnmatch

    import torch

    from diffquant.backends.base import count_stored_bytes

    convs = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
             torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
    kinds = (torch.nn.Linear,) if spec.qtype in BLOCK_KWARGS else (torch.nn.Linear, *convs)
    off = [*DEFAULT_DISABLED, *(f"*{m}*" for m in spec.skip_modules),
           *(f"*{m}*" for m in getattr(model, "_keep_in_fp32_modules", None) or ())]

    def converted(name: str, module: Any) -> int | None:
        if not name or not isinstance(module, kinds) or any(fnmatch(f"{name}.weight_quantizer", p) for p in off):
            return None
        weight = module.weight
        bias = module.bias.numel() * module.bias.element_size() if module.bias is not None else 0
        return weight_bytes(spec.qtype, tuple(weight.shape), weight.element_size()) + bias

    return count_stored_bytes(model, converted)


evaluation_copy = same_layer
