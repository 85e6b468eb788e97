"""FP8 layerwise casting: weights stored in float8, upcast per layer just before it runs
(diffusers' hooks; works for transformers models too through ``apply_layerwise_casting``)."""

from __future__ import annotations

from typing import Any

from diffquant.backends.base import ComponentContext, load_plain
from diffquant.recipes.model import QuantSpec

name = "layerwise"


def why_not_here(spec: QuantSpec, device: str) -> str | None:
    import torch

    if not hasattr(torch, "float8_e4m3fn"):
        return "this torch build has no float8 dtypes; upgrade torch to >= 2.1"
    return None


def load_config(spec: QuantSpec, ctx: ComponentContext) -> Any | None:
    return None


def load_component(spec: QuantSpec, ctx: ComponentContext, cache_dir: Any) -> Any:
    return apply_casting(load_plain(ctx), spec, ctx)


def apply_casting(module: Any, spec: QuantSpec, ctx: ComponentContext) -> Any:
    import torch
    from diffusers.hooks import apply_layerwise_casting

    storage = torch.float8_e4m3fn if spec.qtype == "e4m3" else torch.float8_e5m2
    # "auto" skips norms, embeddings and positional layers, as enable_layerwise_casting does.
    skip: str | tuple[str, ...] = tuple(spec.skip_modules) if spec.skip_modules else "auto"
    if skip == "auto" and ctx.library == "diffusers":
        module.enable_layerwise_casting(storage_dtype=storage, compute_dtype=ctx.dtype)
    else:
        if skip == "auto":
            from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

            # transformers marks layers that must not run in low precision (T5's "wo" casts its input
            # to its weight's dtype, which would be float8).
            keep = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
            skip = tuple(DEFAULT_SKIP_MODULES_PATTERN) + keep
        apply_layerwise_casting(module, storage_dtype=storage, compute_dtype=ctx.dtype,
                                skip_modules_pattern=skip)
    return module
