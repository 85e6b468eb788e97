"""What every backend module provides. A backend turns one component's ``QuantSpec`` into either a
library quantization config (applied by diffusers/transformers while loading) or a direct
transformation of an already-loaded module."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from diffquant.errors import DiffquantError
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


@dataclass(frozen=True)
class MemoryTraits:
    """What ``diffquant plan`` models about a backend's memory beyond its stored bytes (CPU)."""

    import_bytes: int = 0  # RSS that importing the backend's library adds
    reads_source: bool = False  # converts the bf16 source weights in RAM: their pages count while loading
    float32_temporaries: bool = False  # quantizes one layer at a time through float32 temporaries
    own_file: bool = False  # the loaded weights are a file of its own format (mapped while loading, kept after)
    dequantizes_layer: bool = False  # a call dequantizes each layer's weight to the compute dtype
    # qtype -> bytes per weight of the full-precision copies a CPU call makes of the largest layer
    cpu_dequantized_copies: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SaveTarget:
    """Where and how ``save`` writes one quantized component (``diffquant quantize``)."""

    folder: Path  # the component's folder in the export (``save`` creates it)
    device: str  # where the pipeline was loaded ("cpu" | "cuda")
    dtype: Any  # the recipe's torch dtype
    allow_pickle: bool = False  # a backend with no safe format may write a pickle


@dataclass(frozen=True)
class PlainLoad:
    """Whether and how plain diffusers/transformers (plus the backend's own package) load one
    exported component, and the Python lines that do it (``diffquant.export.usage.plain_code``)."""

    cpu: bool
    cuda: bool
    how: str  # the loader, in words
    why_not: str = ""  # when one of the two is False
    imports: tuple[str, ...] = ()
    defines: tuple[str, ...] = ()  # lines defining helpers (written once however many components use them)
    before: tuple[str, ...] = ()  # lines building the component before the pipeline (passed by its name)
    after: tuple[str, ...] = ()  # lines run on the built pipeline
    on_device: bool = False  # the library already puts this component on the GPU (no pipe.to("cuda"))


@runtime_checkable
class BackendModule(Protocol):
    """Everything about one backend, answered by its module ``diffquant.backends.<name>`` (or the
    module its catalogue entry names). Generic code asks these; it never tests a backend's name.
    ``tests/test_backend_contract.py`` checks that every catalogue backend provides all of them."""

    name: str  # its catalogue name
    packages: tuple[str, ...]  # distributions whose versions a result or export records
    cache_quantized: bool  # quantize-on-load is slow enough to cache the quantized pipeline on disk
    memory: MemoryTraits  # what plan models about it
    formats: dict[str, str]  # the export formats ``save`` writes -> their files, in words (model card)

    # -- can it run, and what to know -------------------------------------------------------------
    def why_not_here(self, spec: QuantSpec, device: str) -> str | None:
        """None if this spec can run on ``device``; otherwise the reason, with the nearest recipe."""

    def notes(self, spec: QuantSpec, device: str) -> list[str]:
        """What runs but a user should know (no refusal)."""

    def disk_offload_breaks(self, spec: QuantSpec) -> str | None:
        """What goes wrong when group offload to disk round-trips these weights; None when it works."""

    def compile_breaks(self, spec: QuantSpec, device: str, mode: str) -> str | None:
        """Why ``torch.compile(mode=mode)`` of these layers fails on ``device``; None when it runs."""

    # -- loading ----------------------------------------------------------------------------------
    def load_config(self, spec: QuantSpec, ctx: ComponentContext) -> Any | None:
        """A diffusers/transformers quantization config for loading, or None to use ``load_component``."""

    def load_component(self, spec: QuantSpec, ctx: ComponentContext, cache_dir: Any) -> Any:
        """Load (and quantize) the component directly, when no loading config applies."""

    def cached_file(self, spec: QuantSpec, ctx: ComponentContext, cache_dir: Any) -> bool | None:
        """Whether ``load_component`` finds its quantized file already cached; None: it caches none."""

    def before_load(self) -> None:
        """Prepare the libraries before a saved pipeline holding this backend's components loads."""

    def after_load(self, pipe: Any, model_dir: Path) -> None:
        """Repair what the libraries' loaders got wrong in a saved pipeline just loaded."""

    # -- saving and reloading (diffquant quantize) ------------------------------------------------
    def save(self, component: Any, spec: QuantSpec, target: SaveTarget) -> str:
        """Write ``component`` into ``target.folder``; returns its format (``native`` or one of ``formats``)."""

    def load_saved(self, folder: Path, meta: dict[str, Any], spec: QuantSpec, dtype: Any, device: str) -> Any:
        """Rebuild a component ``save`` wrote in one of ``formats`` (``meta``: its component marker)."""

    def plain_load(self, component: Any) -> PlainLoad | None:
        """How plain libraries load this exported component (``export.usage.ComponentExport``);
        None: as any ``native`` component (the library's ``from_pretrained``)."""

    # -- plan and sensitivity ---------------------------------------------------------------------
    def stored_bytes(self, spec: QuantSpec, model: Any, ctx: ComponentContext) -> int:
        """Bytes the component holds once loaded with ``spec`` (``model``: plain, on the meta device)."""

    def quantize_linear(self, linear: Any, spec: QuantSpec, name: str, model: Any) -> Any | None:
        """The layer ``linear`` becomes under ``spec``, as a new module; None when kept precise.
        Raises ``DiffquantError`` when the backend cannot quantize one module at a time."""

    def keeps_precise(self, spec: QuantSpec, name: str, model: Any) -> bool:
        """Whether loading with ``spec`` leaves module ``name`` of ``model`` unquantized."""

    def keep_precise(self, spec: QuantSpec, keep: dict[str, str | None], model: Any) -> QuantSpec:
        """``spec`` changed so that the modules in ``keep`` get the type given (None: kept precise)."""

    def upgrade_type(self, spec: QuantSpec) -> str | None:
        """One type up in precision for a module, where the backend mixes types; else None."""

    def evaluation_copy(self, layer: Any) -> Any:
        """A module computing what ``quantize_linear``'s ``layer`` computes, bit for bit, but cheaper
        to run many times (sensitivity's in-context passes); ``layer`` itself when there is none."""


def interface() -> tuple[str, ...]:
    """The names every backend module provides (``BackendModule``'s members)."""
    members = [n for n in vars(BackendModule) if not n.startswith("_")]
    return tuple(dict.fromkeys([*BackendModule.__annotations__, *members]))


# -- shared answers, for modules whose backend has nothing to say -----------------------------------

def no_notes(spec: QuantSpec, device: str) -> list[str]:
    return []


def no_disk_offload_issue(spec: QuantSpec) -> str | None:
    return None


def no_compile_issue(spec: QuantSpec, device: str, mode: str) -> str | None:
    return None


def no_cached_file(spec: QuantSpec, ctx: ComponentContext, cache_dir: Any) -> bool | None:
    return None


def nothing_before_load() -> None:
    return None


def nothing_after_load(pipe: Any, model_dir: Path) -> None:
    return None


def config_only(spec: QuantSpec, ctx: ComponentContext, cache_dir: Any) -> Any:
    """``load_component`` of a backend that always loads through its ``load_config``."""
    raise AssertionError(f"{spec.backend} always loads through its config")


def save_native(component: Any, spec: QuantSpec, target: SaveTarget) -> str:
    """``save`` of a backend whose library writes and reads its own safetensors (``save_pretrained``)."""
    component.save_pretrained(target.folder, safe_serialization=True)
    return "native"


def plain_as_native(component: Any) -> PlainLoad | None:
    """``plain_load`` of a backend whose exports the libraries load like any other component."""
    return None


def no_saved_formats(folder: Path, meta: dict[str, Any], spec: QuantSpec, dtype: Any, device: str) -> Any:
    """``load_saved`` of a backend whose components reload through the libraries (format ``native``)."""
    raise DiffquantError(f"Unknown saved component format {meta.get('format')!r} for {spec.backend} in {folder}.",
                         hint="re-export the model with this version of diffquant")


def same_layer(layer: Any) -> Any:
    """``evaluation_copy`` of a backend whose quantized layers are as cheap to rerun as they get."""
    return layer


def per_module_unsupported(backend: str) -> Any:
    """The sensitivity hooks of a backend that cannot quantize one module at a time."""
    def refuse(*_args: Any) -> Any:
        raise DiffquantError(f"The {backend} backend cannot quantize one module at a time, so it has "
                             "no sensitivity sweep.", hint="use bnb, torchao, quanto, gguf or fp8-layerwise")
    return refuse


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
