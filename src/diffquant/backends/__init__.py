"""One module per quantization backend, found by name through its catalogue entry
(:func:`get_backend`; :func:`register_backend` adds one at run time), and the questions generic
code asks about a whole recipe: can it run on this device and if not why not, what to note, what
to prepare and repair around loading a saved pipeline. See docs/architecture.md, "A backend"."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from diffquant.errors import DiffquantError, unknown_choice
from diffquant.recipes.catalog import BACKENDS, BackendDef
from diffquant.recipes.model import Recipe

if TYPE_CHECKING:
    from diffquant.backends.base import BackendModule

_REGISTERED: dict[str, Any] = {}  # name -> module object given to register_backend (not imported by path)


def get_backend(name: str) -> BackendModule:
    """The module that answers every question about backend ``name`` (its catalogue entry names it)."""
    entry = BACKENDS.get(name) if isinstance(name, str) else None
    if entry is None:
        raise unknown_choice("backend", str(name), BACKENDS, hint="run `diffquant recipes` for the backends")
    module = _REGISTERED.get(name)
    return module if module is not None else importlib.import_module(entry.module_path)


def register_backend(entry: BackendDef, module: ModuleType | Any | None = None) -> None:
    """Add a backend: its catalogue ``entry`` and, unless ``entry.module`` names an importable module,
    the ``module`` (any object providing ``diffquant.backends.base.BackendModule``). Names are unique."""
    if entry.name in BACKENDS:
        raise DiffquantError(f"A backend named {entry.name!r} is already registered.",
                             hint="choose another name, or unregister_backend() it first")
    if module is None and not entry.module:
        raise DiffquantError(f"Backend {entry.name!r} needs a module: pass one, or name it in its entry's module=.")
    BACKENDS[entry.name] = entry
    if module is not None:
        _REGISTERED[entry.name] = module


def unregister_backend(name: str) -> None:
    """Remove a backend added with :func:`register_backend`."""
    BACKENDS.pop(name, None)
    _REGISTERED.pop(name, None)


def recipe_backends(recipe: Recipe) -> list[BackendModule]:
    """The modules of the backends ``recipe`` uses, each once, in name order."""
    return [get_backend(name) for name in sorted({spec.backend for spec in recipe.quant})]


def tracked_packages() -> tuple[str, ...]:
    """The distributions of every catalogue backend, whose versions results record."""
    return tuple(dict.fromkeys(p for name in BACKENDS for p in get_backend(name).packages))


_ACCELERATOR_OFFLOAD = (
    "{mode} offload moves components between CPU and an accelerator; with no GPU everything "
    "already lives in RAM (diffusers: 'requires accelerator'). Nearest that runs here: "
    "offload-group-leaf(disk) (keeps offloaded weights in files: a real RAM saving on CPU)."
)


def why_not_here(recipe: Recipe, device: str) -> str | None:
    """None if ``recipe`` can run on ``device`` ("cpu" or "cuda"); otherwise the reason."""
    for spec in recipe.quant:
        reason = get_backend(spec.backend).why_not_here(spec, device)
        if reason:
            return reason
    mem = recipe.memory
    if mem.offload_to_disk:
        for spec in recipe.quant:
            broken = get_backend(spec.backend).disk_offload_breaks(spec)
            if broken:
                return (f"Group offload to disk with {spec.backend}-{spec.qtype} weights {broken} "
                        "Nearest that runs: the same recipe with group offload in RAM (no disk), or "
                        "bnb-nf4 / fp8-layerwise with disk offload.")
    if device == "cpu":
        if mem.offload in ("model", "sequential"):
            return _ACCELERATOR_OFFLOAD.format(mode=mem.offload.capitalize())
        if mem.use_stream:
            return ("Group offload with stream=True overlaps host-to-device copies on a CUDA stream; "
                    "there is none on CPU. Nearest that runs here: the same recipe without (stream).")
    if recipe.compile.enabled:
        for spec in recipe.quant:
            crash = get_backend(spec.backend).compile_breaks(spec, device, recipe.compile.mode)
            if crash:
                return crash
    return None  # reduce-overhead/max-autotune otherwise run on CPU; their CUDA graphs are not used


def notes_for(recipe: Recipe, device: str) -> list[str]:
    """Things that run but that a user should know (no refusal)."""
    notes = []
    mem = recipe.memory
    if device == "cpu" and mem.offload.startswith("group") and not mem.offload_to_disk:
        notes.append("group offload CPU->CPU runs but saves no memory (add (disk) for a real saving)")
    for spec in recipe.quant:
        notes += get_backend(spec.backend).notes(spec, device)
    return notes


def prepare_loading(recipe: Recipe) -> None:
    """Let the backends of ``recipe`` prepare the libraries before a saved pipeline is loaded."""
    for backend in recipe_backends(recipe):
        backend.before_load()


def finish_loading(pipe: Any, model_dir: Path, recipe: Recipe) -> None:
    """Let the backends of ``recipe`` repair what the libraries' loaders got wrong in a saved
    pipeline just loaded from ``model_dir``."""
    for backend in recipe_backends(recipe):
        backend.after_load(pipe, Path(model_dir))
