"""SDNQ (SD.Next quantization): int/float weights of 4 to 8 bits with grouped float32 scales,
optionally with a quantized int8/fp8 matmul, through diffusers' ``SDNQConfig``.

It runs on CPU as well as CUDA/ROCm/XPU/MPS. The same config class serves transformers text
encoders: importing ``sdnq`` registers it in transformers' quantizer table. Quantized components
save and reload through the libraries' own ``save_pretrained`` / ``from_pretrained`` (safetensors,
``quant_method: sdnq`` in config.json).
"""

from __future__ import annotations

import os
from typing import Any

from diffquant.backends.base import (
    ComponentContext,
    MemoryTraits,
    PlainLoad,
    config_only,
    no_cached_file,
    no_compile_issue,
    no_saved_formats,
    package_missing,
    per_module_unsupported,
    same_layer,
    save_native,
)
from diffquant.errors import DiffquantError
from diffquant.recipes.model import QuantSpec

name = "sdnq"
packages = ("sdnq",)  # whose versions a result depends on
cache_quantized = False
# Quantizing on load: each bf16 source weight is read and upcast to float32 before quantizing
# (sdnq's create_quantized_param); a call dequantizes each weight to the compute dtype (no fused
# CPU kernel). Not yet fitted to measured peaks (docs/plan.md).
memory = MemoryTraits(reads_source=True, float32_temporaries=True, dequantizes_layer=True)
formats: dict[str, str] = {}  # saves and reloads through the libraries (``native``)
load_component = config_only
cached_file = no_cached_file
compile_breaks = no_compile_issue
save = save_native
load_saved = no_saved_formats
quantize_linear = keeps_precise = keep_precise = upgrade_type = per_module_unsupported(name)

# Recipe type -> SDNQ weights_dtype (sdnq.common.accepted_weight_dtypes). uint3/uint2 are left out:
# with float32 scale and zero point per group of 32/16 they store 5 and 6 bits per weight, no less
# than uint4.
WEIGHTS_DTYPES = {"int8": "int8", "int6": "int6", "int4": "int4", "uint4": "uint4",
                  "fp8": "float8_e4m3fn", "fp6": "float6_e3m2fn", "fp4": "float4_e2m1fn"}


def why_not_here(spec: QuantSpec, device: str) -> str | None:
    return package_missing("sdnq")


def sdnq_kwargs(spec: QuantSpec) -> dict[str, Any]:
    """The SDNQConfig arguments for ``spec``; everything else keeps SDNQ's defaults (group size
    chosen from the type, scales in float32, SDNQ's own per-model skip list)."""
    return {"weights_dtype": WEIGHTS_DTYPES[spec.qtype],
            "use_quantized_matmul": bool(spec.option("matmul", False)),
            "modules_to_not_convert": list(spec.skip_modules) or None}


def load_config(spec: QuantSpec, ctx: ComponentContext) -> Any:
    import diffusers

    # diffusers' SDNQConfig is a factory for sdnq.SDNQConfig, which both libraries accept.
    factory = getattr(diffusers, "SDNQConfig", None)
    if factory is None:  # diffusers older than its SDNQ integration: sdnq's own class
        from sdnq import SDNQConfig as factory
    return factory(**sdnq_kwargs(spec))


def notes(spec: QuantSpec, device: str) -> list[str]:
    if device == "cpu" and os.environ.get("SDNQ_USE_TORCH_COMPILE", "1") != "0":
        return [("sdnq compiles its dequantize step with torch.compile on first use "
                 "(SDNQ_USE_TORCH_COMPILE=0 runs it eagerly)")]
    return []


def disk_offload_breaks(spec: QuantSpec) -> str | None:
    # Measured with diffusers 0.42.1 (tests/test_backends.py keeps this honest).
    return "produces NaN latents (uint4) or another image (int8) (the quantized tensors are not restored)."


def plain_load(component: Any) -> PlainLoad | None:
    return PlainLoad(True, True, f"{component.library} from_pretrained with sdnq installed: close, not bit-identical "
                                 "(diffusers 0.42.1 + sdnq 0.2.8 round the saved float32 scales through "
                                 "bf16 on load; diffquant.load_pipeline restores them exactly)")


def stored_bytes(spec: QuantSpec, model: Any, ctx: ComponentContext) -> int:
    """Bytes this component holds once loaded with ``spec``, exact: SDNQ's own quantizer is run on a
    copy of the meta-device model (nothing is allocated), after the same skip rules its loader
    adds (``_process_model_before_weight_loading``: its per-model skip and dtype tables, the model's
    ``_keep_in_fp32_modules`` and tied weights, transformers' default skips), so the layers it
    picks (Linear only by default; under 16384 weights or 32 input channels kept), its group size
    (2**(bits+2) for Linear, shrunk to divide the row), packing and float32 scales / zero points
    are the library's own rather than a copy of its rules that could drift."""
    import copy

    from diffquant.backends.base import count_stored_bytes

    missing = package_missing("sdnq")
    if missing:
        raise DiffquantError("diffquant plan counts SDNQ's bytes with SDNQ's own quantizer. " + missing,
                             hint="pip install 'diffquant[sdnq]'")
    from sdnq import SDNQQuantizer
    from sdnq.quantizer import apply_sdnq_to_module

    quantizer = SDNQQuantizer(load_config(spec, ctx), pre_quantized=False)  # quantizing, not reloading
    twin = copy.deepcopy(model)
    keep = [*(getattr(model, "_keep_in_fp32_modules", None) or ()),
            *(getattr(model, "_keep_in_fp32_modules_strict", None) or ())]
    quantizer._process_model_before_weight_loading(twin, device_map=None, keep_in_fp32_modules=keep or None)
    twin, _ = apply_sdnq_to_module(twin, quantizer.quantization_config, torch_dtype=ctx.dtype)
    return count_stored_bytes(twin, lambda _name, _module: None)


def before_load() -> None:
    """Register SDNQ with transformers before a saved pipeline is loaded, whatever order the
    pipeline loads its components in: transformers learns ``quant_method: sdnq`` only from
    ``import sdnq`` (diffusers' note: without it the packed weights of a text encoder mis-load)."""
    import sdnq  # noqa: F401  (import side effect: registers the quantizer)


def after_load(pipe: Any, model_dir: Any) -> None:
    """Put back the exact saved tensors of every SDNQ component of a reloaded pipeline.

    diffusers' loader (0.42.1 with sdnq 0.2.8) casts a pre-quantized SDNQ model's float32 scales to
    the pipeline dtype and back, so a reloaded bf16 pipeline's scales lose 16 bits and its images
    differ from the quantized original's. The files hold them exactly.
    """
    import torch
    from safetensors.torch import load_file

    for comp_name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module) or not _has_sdnq_layers(component):
            continue
        tensors = dict(component.named_parameters()) | dict(component.named_buffers())
        for path in sorted((model_dir / comp_name).glob("*.safetensors")):
            for key, saved in load_file(str(path)).items():
                tensor = tensors.get(key)
                if tensor is not None and tensor.dtype == saved.dtype and tensor.shape == saved.shape:
                    with torch.no_grad():
                        tensor.copy_(saved)


def _has_sdnq_layers(module: Any) -> bool:
    return any(hasattr(m, "sdnq_dequantizer") for m in module.modules())


evaluation_copy = same_layer
