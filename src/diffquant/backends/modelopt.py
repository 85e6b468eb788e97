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
                                          modules_to_not_convert=list(spec.skip_modules) or None)


def save(component: Any, spec: QuantSpec, target: SaveTarget) -> str:
    raise DiffquantError("diffquant cannot export ModelOpt components yet (no save/reload round trip has been "
                         "checked on a GPU).", hint="export another recipe, or load the model with this one directly")


def stored_bytes(spec: QuantSpec, model: Any, ctx: ComponentContext) -> int:
    raise DiffquantError("diffquant plan has no byte model for ModelOpt yet.",
                         hint=f"measure it instead on a GPU: diffquant bench --recipes modelopt-{spec.qtype}")
