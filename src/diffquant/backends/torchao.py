"""torchao weight-only and dynamic quantization, always as config objects (diffusers >= 0.38
rejects the old string quant types)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from diffquant.backends.base import (
    ComponentContext,
    MemoryTraits,
    SaveTarget,
    config_only,
    no_cached_file,
    no_saved_formats,
    nothing_after_load,
    nothing_before_load,
    package_missing,
    plain_as_native,
    same_layer,
)
from diffquant.recipes.model import QuantSpec

name = "torchao"
packages = ("torchao",)
cache_quantized = True  # quantize-on-load is slow for big models
memory = MemoryTraits(reads_source=True, float32_temporaries=True)
formats = {"native-pickle": "**pickle (.bin)**"}  # only where torchao has no safetensors for a type
load_component = config_only
cached_file = no_cached_file
before_load = nothing_before_load
after_load = nothing_after_load
load_saved = no_saved_formats  # torchao components reload through the libraries
plain_load = plain_as_native

_CPU_REFUSALS = {
    "int4wo": "torchao int4 weight-only has no CPU layout (its packed formats need CUDA kernels). "
              "Nearest that runs here: quanto-int4 or bnb-nf4 (real 4-bit storage), or torchao-intx4wo "
              "(int4 values, stored in int8: no memory saving on CPU).",
    "fp8dq": "torchao float8 dynamic activation quantization needs a CUDA GPU with compute capability "
             ">= 8.9. Nearest that runs here: torchao-fp8wo.",
}
# Blackwell number formats (torchao.prototype.mx_formats): their matmuls need compute capability 10.0+.
_BLACKWELL = {
    "nvfp4": "torchao NVFP4 (NVFP4DynamicActivationNVFP4WeightConfig) runs fp4 matmuls on Blackwell tensor cores: "
             "it needs a CUDA GPU with compute capability >= 10.0. Nearest that runs here: {nearest}.",
    "mxfp8": "torchao MXFP8 (MXDynamicActivationMXWeightConfig) runs block-scaled fp8 matmuls on Blackwell tensor "
             "cores: it needs a CUDA GPU with compute capability >= 10.0. Nearest that runs here: {nearest}.",
}
_BLACKWELL_NEAREST = {("nvfp4", "cpu"): "sdnq-fp4 or bnb-nf4", ("mxfp8", "cpu"): "sdnq-fp8 or torchao-fp8wo",
                      ("nvfp4", "cuda"): "bnb-nf4 or sdnq-fp4", ("mxfp8", "cuda"): "torchao-fp8wo, or torchao-fp8dq "
                                                                                   "on SM 8.9+"}


def why_not_here(spec: QuantSpec, device: str) -> str | None:
    missing = package_missing("torchao")
    if missing:
        return missing
    if device == "cpu" and spec.qtype in _CPU_REFUSALS:
        return _CPU_REFUSALS[spec.qtype]
    if spec.qtype in _BLACKWELL:
        reason = _BLACKWELL[spec.qtype].format(nearest=_BLACKWELL_NEAREST[spec.qtype, device])
        if device == "cpu":
            return reason
        import torch

        if torch.cuda.is_available() and torch.cuda.get_device_capability() < (10, 0):
            return reason
    if device == "cuda" and spec.qtype == "fp8dq":
        import torch

        # Judging for CUDA on a machine without one (diffquant recipes --device cuda): can't check.
        if torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9):
            return _CPU_REFUSALS["fp8dq"]
    return None


def ao_config(spec: QuantSpec) -> Any:
    import torch
    import torchao.quantization as q

    group = spec.option("group_size")
    if spec.qtype == "int8wo" and group:
        from torchao.quantization.granularity import PerGroup

        # diffusers documents Int8WeightOnlyConfig(group_size=128, version=2); torchao 0.18 spells the
        # groups of its version 2 (the default) as a granularity.
        return q.Int8WeightOnlyConfig(granularity=PerGroup(group), version=2)
    if spec.qtype == "int8wo":
        return q.Int8WeightOnlyConfig()
    if spec.qtype == "int4wo":
        return q.Int4WeightOnlyConfig(group_size=group or 128)
    if spec.qtype == "intx4wo":
        from torchao.quantization.granularity import PerGroup

        return q.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group or 32))
    if spec.qtype == "fp8wo":
        return q.Float8WeightOnlyConfig()
    if spec.qtype == "int8dq":
        return q.Int8DynamicActivationInt8WeightConfig()
    if spec.qtype == "fp8dq":
        return q.Float8DynamicActivationFloat8WeightConfig()
    if spec.qtype == "nvfp4":
        from torchao.prototype.mx_formats import NVFP4DynamicActivationNVFP4WeightConfig

        return NVFP4DynamicActivationNVFP4WeightConfig()
    if spec.qtype == "mxfp8":
        from torchao.prototype.mx_formats import MXDynamicActivationMXWeightConfig

        return MXDynamicActivationMXWeightConfig()  # float8 e4m3 values, one e8m0 scale per 32
    raise AssertionError(f"unhandled torchao type {spec.qtype}")  # the catalogue and this list agree


def load_config(spec: QuantSpec, ctx: ComponentContext) -> Any:
    import diffusers
    import transformers

    cls = diffusers.TorchAoConfig if ctx.library == "diffusers" else transformers.TorchAoConfig
    skip = list(spec.skip_modules) + _ungroupable_linears(spec, ctx)
    return cls(ao_config(spec), modules_to_not_convert=skip or None)


def _ungrouped(spec: QuantSpec, in_features: int) -> bool:
    """Grouped int8 needs the input width to be a multiple of the group (torchao asserts otherwise:
    FLUX's x_embedder takes 64 channels); such layers stay in the compute dtype."""
    group = spec.option("group_size")
    return bool(spec.qtype == "int8wo" and group and in_features % int(group))


def _ungroupable_linears(spec: QuantSpec, ctx: ComponentContext) -> list[str]:
    """Names of the component's linears that ``_ungrouped`` keeps, read from its config on the meta device."""
    if not (spec.qtype == "int8wo" and spec.option("group_size")):
        return []
    import diffusers
    import torch
    import transformers
    from accelerate import init_empty_weights

    sub = Path(ctx.model_dir) / ctx.name
    with init_empty_weights(include_buffers=True):
        if ctx.library == "diffusers":
            cls = getattr(diffusers, ctx.class_name)
            model = cls.from_config(cls.load_config(sub))
        else:
            model = getattr(transformers, ctx.class_name)(transformers.AutoConfig.from_pretrained(sub))
    return [name for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and _ungrouped(spec, m.in_features)]


def notes(spec: QuantSpec, device: str) -> list[str]:
    if device == "cpu" and spec.qtype == "intx4wo":
        return ["torchao-intx4wo stores int4 values in int8 on CPU: no memory saving over int8"]
    if spec.qtype == "int8wo" and spec.option("group_size"):
        return [(f"torchao-int8wo(group_size={spec.option('group_size')}): linears whose input width is not a "
                 "multiple of the group stay in the compute dtype")]
    return []


def disk_offload_breaks(spec: QuantSpec) -> str | None:
    # Measured with diffusers 0.42.1 (tests/test_backends.py keeps this honest).
    return "is refused by diffusers: safetensors cannot serialise torchao tensor subclasses."


# Measured on CPU (torch 2.13.0, torchao 0.18.0, 2026-12-01: docs/benchmarks.md and the demo on
# zoo:shapes): the worker dies with SIGSEGV in native code during the first compiled call.
_CPU_AUTOTUNE_CRASHES = {
    "int8wo": ("torch.compile with mode=max-autotune of torchao int8 weight-only layers "
               "crashes on CPU (segmentation fault in inductor's compiled code; torch 2.13, "
               "torchao 0.18). Nearest that ran here: "
               "torchao-fp8wo+compile(fullgraph,mode=max-autotune), or torchao-int8wo without "
               "compile."),
}


def compile_breaks(spec: QuantSpec, device: str, mode: str) -> str | None:
    if device == "cpu" and mode.startswith("max-autotune"):
        return _CPU_AUTOTUNE_CRASHES.get(spec.qtype)
    return None  # reduce-overhead/max-autotune otherwise run on CPU; their CUDA graphs are not used


def save(component: Any, spec: QuantSpec, target: SaveTarget) -> str:
    """torchao >= 0.16 flattens its tensor subclasses into safetensors (diffusers >= 0.36 and
    transformers >= 4.56 read them back); older versions or unlisted tensor types need pickle."""
    from diffquant.export.files import PickleNeeded

    folder = target.folder
    try:
        component.save_pretrained(folder, safe_serialization=True)
    except Exception as exc:  # any failure here means "no safetensors for this type"
        if folder.exists():
            shutil.rmtree(folder)
        if not target.allow_pickle:
            raise PickleNeeded(
                f"torchao could not write {type(component).__name__} as safetensors ({type(exc).__name__}: "
                f"{str(exc)[:200]}); only a pickle (.bin) is possible with these library versions.",
                hint="upgrade torchao (>= 0.16) and diffusers, choose another recipe, or pass --allow-pickle "
                     "(allow_pickle=True) to write a pickle that the card names and loaders refuse by default"
            ) from exc
        component.save_pretrained(folder, safe_serialization=False)
        return "native-pickle"
    return "native"


# --- One module at a time (diffquant.sensitivity asks these) ---------------------------------

def quantize_linear(linear: Any, spec: QuantSpec, name: str, model: Any) -> Any | None:
    """The torchao layer that ``linear`` becomes under ``spec`` (a new module), or None when kept."""
    import copy

    import torch
    from torchao.quantization import quantize_

    if keeps_precise(spec, name, model):
        return None
    holder = torch.nn.ModuleDict({"layer": copy.deepcopy(linear)})
    quantize_(holder, ao_config(spec))
    return holder["layer"]


def keeps_precise(spec: QuantSpec, name: str, model: Any) -> bool:
    # diffusers' TorchAoQuantizer: a parameter is skipped when "<key>." occurs anywhere in its name.
    param = f"{name}.weight"
    keys = list(spec.skip_modules) + list(getattr(model, "_keep_in_fp32_modules", None) or ())
    return any(f"{key}." in param or key == param for key in keys)


def keep_precise(spec: QuantSpec, keep: dict[str, str | None], model: Any) -> QuantSpec:
    """``spec`` with the ``keep`` modules unquantized. torchao matches by substring, so a name can
    keep others too (``transformer_blocks.0.x`` is inside ``single_transformer_blocks.0.x``):
    ``keeps_precise`` tells the caller what is really kept."""
    from dataclasses import replace

    return replace(spec, skip_modules=tuple(sorted(set(spec.skip_modules) | set(keep))))


def upgrade_type(spec: QuantSpec) -> str | None:
    return None
def weight_bytes(qtype: str, out_features: int, in_features: int, group_size: int | None,
                 dtype_bytes: int) -> int:
    """Bytes torchao (0.18) stores for one ``Linear`` weight of this type.

    int8wo/int8dq: int8 values, a float32 scale and an int8 zero point per output row (per row and
    group with ``group_size``).
    fp8wo: float8 values and a float32 scale per row; fp8dq: one float32 scale per tensor.
    intx4wo: int4 values held in int8 (no packing), a scale (weight dtype) and an int8 zero point
    per group. int4wo: two values per byte, a scale and a zero point (weight dtype) per group.
    """
    n = out_features * in_features
    if qtype == "int8wo" and group_size:  # a float32 scale and an int8 zero point per row and group
        return n + 5 * out_features * -(-in_features // group_size)
    if qtype in ("int8wo", "int8dq"):
        return n + 5 * out_features
    if qtype == "fp8wo":
        return n + 4 * out_features
    if qtype == "fp8dq":
        return n + 4
    groups = out_features * -(-in_features // (group_size or (32 if qtype == "intx4wo" else 128)))
    if qtype == "intx4wo":
        return n + groups * (dtype_bytes + 1)
    if qtype == "int4wo":
        return -(-n // 2) + groups * 2 * dtype_bytes
    raise AssertionError(f"unhandled torchao type {qtype}")


def stored_bytes(spec: QuantSpec, model: Any, ctx: ComponentContext) -> int:
    """Bytes this component holds once loaded with ``spec`` (``model``: the plain meta-device model).
    torchao's default filter: every ``nn.Linear`` not named by ``skip`` (``modules_to_not_convert``);
    transformers' ``_keep_in_fp32_modules`` are quantized too (T5's ``wo`` is)."""
    import torch

    from diffquant.backends.base import count_stored_bytes

    patterns = tuple(spec.skip_modules)
    group = spec.option("group_size")

    def converted(name: str, module: Any) -> int | None:
        if not name or not isinstance(module, torch.nn.Linear) or _skipped(name, patterns):
            return None
        if _ungrouped(spec, module.in_features):
            return None
        bias = module.bias.numel() * module.bias.element_size() if module.bias is not None else 0
        return weight_bytes(spec.qtype, module.out_features, module.in_features, group,
                            module.weight.element_size()) + bias

    return count_stored_bytes(model, converted)


def _skipped(name: str, patterns: tuple[str, ...]) -> bool:
    # A module named by a pattern, or inside one (modules_to_not_convert names modules by their path).
    return any(p in name.split(".") or name == p or name.startswith(p + ".") for p in patterns)


evaluation_copy = same_layer
