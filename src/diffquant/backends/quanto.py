"""optimum-quanto int8/int4/int2/fp8 weights, through diffusers'/transformers' QuantoConfig."""

from __future__ import annotations

from typing import Any

from diffquant.backends.base import ComponentContext, package_missing
from diffquant.recipes.model import QuantSpec

name = "quanto"
_WEIGHTS = {"int8": "int8", "int4": "int4", "int2": "int2", "fp8": "float8"}


def why_not_here(spec: QuantSpec, device: str) -> str | None:
    return package_missing("quanto")


def load_config(spec: QuantSpec, ctx: ComponentContext) -> Any:
    import diffusers
    import transformers

    skip = list(spec.skip_modules) or None
    if ctx.library == "diffusers":
        return diffusers.QuantoConfig(weights_dtype=_WEIGHTS[spec.qtype], modules_to_not_convert=skip)
    return transformers.QuantoConfig(weights=_WEIGHTS[spec.qtype], modules_to_not_convert=skip)


def load_component(spec: QuantSpec, ctx: ComponentContext, cache_dir: Any) -> Any:
    raise AssertionError("quanto always loads through its config")


def weight_bytes(qtype: str, out_features: int, in_features: int, dtype_bytes: int) -> int:
    """Bytes optimum-quanto (0.2.7) stores for one ``Linear`` weight (QLinear's ``weight``).

    int8/fp8: one byte per value and a scale (weight dtype) per output row. int4/int2: values
    packed 2 or 4 per byte along the first axis of the grouped tensor, with a scale and a shift
    (weight dtype) per group; the group is 128 inputs, shrunk by 32 until it divides the row,
    else the whole row (``QModuleMixin.__init__``)."""
    n = out_features * in_features
    if qtype in ("int8", "fp8"):
        return n + dtype_bytes * out_features
    per_byte = 2 if qtype == "int4" else 4
    group = None
    if in_features > 128:
        group = 128
        while in_features % group and group > 32:
            group -= 32
        group = group if in_features % group == 0 else None
    rows, cols = (n // group, group) if group else (out_features, in_features)
    return -(-rows // per_byte) * cols + 2 * dtype_bytes * rows


def stored_bytes(spec: QuantSpec, model: Any, ctx: ComponentContext) -> int:
    """Bytes this component holds once loaded with ``spec`` (``model``: the plain meta-device model).
    diffusers/transformers swap every ``nn.Linear`` for a ``QLinear``, minus ``modules_to_not_convert``
    and the model's ``_keep_in_fp32_modules``; each QLinear adds two scalar buffers (input/output
    scale: the compute dtype in diffusers, float32 in transformers)."""
    import torch

    from diffquant.backends.base import count_stored_bytes

    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    patterns = tuple(spec.skip_modules) + keep
    scalar_bytes = 2 * (model.dtype.itemsize if ctx.library == "diffusers" else 4)

    def converted(name: str, module: Any) -> int | None:
        if not name or not isinstance(module, torch.nn.Linear) or _skipped(name, patterns):
            return None
        bias = module.bias.numel() * module.bias.element_size() if module.bias is not None else 0
        return weight_bytes(spec.qtype, module.out_features, module.in_features,
                            module.weight.element_size()) + bias + scalar_bytes

    return count_stored_bytes(model, converted)


def _skipped(name: str, patterns: tuple[str, ...]) -> bool:
    # A module named by a pattern, or inside one (modules_to_not_convert names modules by their path).
    return any(p in name.split(".") or name == p or name.startswith(p + ".") for p in patterns)
