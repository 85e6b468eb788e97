"""What every backend module provides. A backend turns one component's ``QuantSpec`` into either a
library quantization config (applied by diffusers/transformers while loading) or a direct
transformation of an already-loaded module."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Protocol

from diffquant.recipes.catalog import BACKENDS
from diffquant.recipes.model import QuantSpec


@dataclass(frozen=True)
class ComponentContext:
    """What a backend needs to know about the component it quantizes."""

    name: str  # component name in the pipeline, e.g. "transformer"
    library: str  # "diffusers" or "transformers"
    class_name: str  # e.g. "FluxTransformer2DModel"
    model_dir: str  # local pipeline folder
    dtype: Any  # torch dtype for unquantized weights / compute
    device: str  # "cpu" | "cuda"
    is_denoiser: bool


class Backend(Protocol):
    name: str

    def why_not_here(self, spec: QuantSpec, device: str) -> str | None:
        """None if this spec can run on ``device``; otherwise the reason, with the nearest recipe."""

    def load_config(self, spec: QuantSpec, ctx: ComponentContext) -> Any | None:
        """A diffusers/transformers quantization config for loading, or None to use ``load_component``."""

    def load_component(self, spec: QuantSpec, ctx: ComponentContext, cache_dir: Any) -> Any:
        """Load (and quantize) the component directly, when no loading config applies."""


def package_missing(backend_name: str) -> str | None:
    """The reason a backend's package is missing, naming the extra that installs it."""
    backend = BACKENDS[backend_name]
    top = backend.package.split(".")[0]
    try:
        found = importlib.util.find_spec(backend.package) is not None
    except ModuleNotFoundError:
        found = False
    if found:
        return None
    extra = f"pip install 'diffquant[{backend.extra}]'" if backend.extra != "core" else f"pip install {top}"
    return f"{backend.title} is not installed ({backend.package} not importable); install it with: {extra}"


def load_plain(ctx: ComponentContext) -> Any:
    """Load a component without quantization, from its subfolder of the pipeline folder."""
    import diffusers
    import transformers

    library = diffusers if ctx.library == "diffusers" else transformers
    cls = getattr(library, ctx.class_name)
    return cls.from_pretrained(ctx.model_dir, subfolder=ctx.name, torch_dtype=ctx.dtype)
