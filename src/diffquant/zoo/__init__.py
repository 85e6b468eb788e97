"""The offline model zoo: ``zoo:NAME`` model references.

No weights can be downloaded, so each entry *builds* a diffusers pipeline folder (from configs,
seeded random weights and offline-built tokenizers) once into a cache directory, or points at a
folder shipped inside the package. Pipelines are then loaded through the ordinary
``from_pretrained`` path, exactly like a Hub model.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from diffquant.atomic import atomic_dir
from diffquant.errors import unknown_choice

ZOO_PREFIX = "zoo:"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    builder: str  # "module:function"; function(folder: Path) -> None writes a pipeline folder
    pipeline_class: str  # diffusers class name, e.g. "FluxPipeline"
    version: int = 1  # bump when the builder's output changes, so caches rebuild
    shipped: bool = False  # True: builder returns a folder inside the package instead of writing one
    # (steps, height, width, guidance) when the folder has no diffquant.json of its own
    defaults: tuple[int, int, int, float] | None = None


ZOO: dict[str, ZooEntry] = {}


def register(entry: ZooEntry) -> None:
    if entry.name in ZOO:
        raise ValueError(f"zoo entry {entry.name!r} registered twice")
    ZOO[entry.name] = entry


def cache_root() -> Path:
    """Where built zoo models live: $DIFFQUANT_CACHE/zoo, else ~/.cache/diffquant/zoo."""
    base = os.environ.get("DIFFQUANT_CACHE") or os.path.join(Path.home(), ".cache", "diffquant")
    return Path(base) / "zoo"


def get_entry(name: str) -> ZooEntry:
    _load_builtin_entries()
    if name not in ZOO:
        raise unknown_choice("zoo model", name, ZOO, hint="use one of the listed names as zoo:NAME")
    return ZOO[name]


def zoo_defaults(model: str) -> tuple[int, int, int, float] | None:
    """The zoo's own generation defaults for a ``zoo:NAME`` reference (None for other references
    and for entries whose folder carries a diffquant.json)."""
    if not model.startswith(ZOO_PREFIX):
        return None
    _load_builtin_entries()
    entry = ZOO.get(model.removeprefix(ZOO_PREFIX))
    return entry.defaults if entry else None


def list_entries() -> list[ZooEntry]:
    _load_builtin_entries()
    return [ZOO[k] for k in sorted(ZOO)]


def _resolve_callable(spec: str) -> Callable[..., object]:
    module_name, attr = spec.split(":")
    return getattr(importlib.import_module(module_name), attr)


def ensure_model(name: str, cache_dir: Path | None = None) -> Path:
    """Return the folder of zoo model ``name``, building it on first use (atomically)."""
    entry = get_entry(name)
    build = _resolve_callable(entry.builder)
    if entry.shipped:
        return Path(build())  # type: ignore[arg-type]
    root = cache_dir or cache_root()
    folder = root / f"{entry.name}-v{entry.version}"
    if (folder / "model_index.json").exists():
        return folder
    with atomic_dir(folder, done="model_index.json") as tmp:  # another process may finish it first
        build(tmp)
    return folder


_LOADED = False


def _load_builtin_entries() -> None:
    """Import the modules that register built-in entries (kept lazy: they import torch)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for module in ("diffquant.zoo.catalog",):
        importlib.import_module(module)
