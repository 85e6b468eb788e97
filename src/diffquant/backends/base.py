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


def count_stored_bytes(model: Any, converted: Any) -> int:
    """Bytes of every parameter and buffer of ``model`` once a backend has converted it.

    ``model`` is the plain component on the meta device, in the dtypes loading gives it (nothing is
    allocated). ``converted(name, module)`` returns the bytes of ``module``'s whole subtree once the
    backend has converted it, or None to leave the module as it is (its own tensors count as they
    are and its children are asked in turn). Shared (tied) tensors count once, as in
    ``diffquant.inspect.module_stats``.
    """
    seen: set[int] = set()
    total = 0

    def walk(name: str, module: Any) -> None:
        nonlocal total
        replaced = converted(name, module)
        if replaced is not None:
            total += int(replaced)
            seen.update(id(t) for t in module.parameters())
            seen.update(id(t) for t in module.buffers())
            return
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
        for child_name, child in module.named_children():
            walk(f"{name}.{child_name}" if name else child_name, child)

    walk("", model)
    return total


def dtype_size(dtype: Any) -> int:
    """Bytes per element of a torch dtype."""
    import torch

    return int(torch.empty((), dtype=dtype, device="meta").element_size())


def count_param_bytes(model: Any, param_bytes: Any) -> int:
    """Like :func:`count_stored_bytes`, one parameter at a time: ``param_bytes(full_name, param)``
    gives each parameter's stored bytes; buffers count as they are."""
    seen: set[int] = set()
    total = 0
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) not in seen:
            seen.add(id(param))
            total += int(param_bytes(name, param))
    for buf in model.buffers():
        if id(buf) not in seen:
            seen.add(id(buf))
            total += buf.numel() * buf.element_size()
    return total
