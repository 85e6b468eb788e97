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


# --- One module at a time (diffquant.sensitivity asks these) ---------------------------------

def quantize_linear(linear: Any, spec: QuantSpec, name: str, model: Any) -> Any | None:
    """The quanto layer that ``linear`` becomes under ``spec`` (a new, frozen module), or None."""
    import copy

    import optimum.quanto as oq
    import torch

    if keeps_precise(spec, name, model):
        return None
    weights = {"int8": oq.qint8, "int4": oq.qint4, "int2": oq.qint2, "fp8": oq.qfloat8}[spec.qtype]
    holder = torch.nn.ModuleDict({"layer": copy.deepcopy(linear)})
    oq.quantize(holder, weights=weights)
    oq.freeze(holder)
    return holder["layer"]


def keeps_precise(spec: QuantSpec, name: str, model: Any) -> bool:
    # diffusers' _replace_with_quanto_layers compares each child's *short* name with the list.
    return any(part in spec.skip_modules for part in name.split("."))


def keep_precise(spec: QuantSpec, keep: dict[str, str | None], model: Any) -> QuantSpec:
    """quanto skips by short name: keeping ``transformer_blocks.0.attn.to_v`` keeps every ``to_v``
    (``keeps_precise`` tells the caller what is really kept)."""
    from dataclasses import replace

    return replace(spec, skip_modules=tuple(sorted(set(spec.skip_modules) | {n.split(".")[-1] for n in keep})))


def upgrade_type(spec: QuantSpec) -> str | None:
    return None
