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
