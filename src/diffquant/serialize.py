"""Saving a quantized pipeline and loading it back (``diffquant quantize``).

Each component is written in the safe, library-readable layout its backend allows
(:mod:`diffquant.export.formats`): torchao, SDNQ and unquantized components through ``save_pretrained``
as safetensors; optimum-quanto with its quantization map; bitsandbytes on CPU as its own packed
state dict plus the ``BitsAndBytesConfig`` a GPU save would record; GGUF as the .gguf file; FP8
layerwise casting as the float8 weights. A ``diffquant_quantized.json`` at the top records the
recipe, versions, per-component formats and weight bytes; a ``README.md`` model card says how to
load the folder with and without diffquant (:mod:`diffquant.export.card`). Pickles are written only
with ``allow_pickle=True`` and refused on load without it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from diffquant.errors import DiffquantError
from diffquant.export.files import EXPORT_MARKER
from diffquant.export.formats import COMPONENT_MARKER, LEGACY_WEIGHTS, load_component, save_component
from diffquant.recipes.model import QuantSpec

MARKER = EXPORT_MARKER
WEIGHTS = LEGACY_WEIGHTS  # kept for callers of the old name
__all__ = ["COMPONENT_MARKER", "MARKER", "WEIGHTS", "is_quantized_export", "load_saved_components", "save_quantized"]


def save_quantized(pipe: Any, out_dir: Path, *, link_unquantized: bool = False, allow_pickle: bool = False,
                   card_from: Path | None = None, base_model: str | None = None) -> Path:
    """Write ``pipe`` (loaded by diffquant) to ``out_dir`` atomically; refuses to overwrite.

    ``link_unquantized`` symlinks unquantized components to the source model instead of copying
    them (the quantized-weights cache does this, and writes no card; an export meant to be moved
    should not). ``allow_pickle`` lets a backend that has no safe format write a pickle.
    ``card_from`` is a results database whose runs of this model and recipe fill the card's
    measured table; ``base_model`` the Hub id the card names (default: the source, if a Hub id).
    """
    from diffquant._version import __version__
    from diffquant.components import read_components, resolve_targets
    from diffquant.load_record import load_info
    from diffquant.settings import default_settings

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DiffquantError(f"Output folder {str(out_dir)!r} exists and is not empty.",
                             hint="choose a new folder, or delete this one first")
    info = load_info(pipe)
    targets = resolve_targets(info.recipe, read_components(info.model_dir))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        shutil.copy2(info.model_dir / "model_index.json", tmp / "model_index.json")
        formats = {}
        for name, component in pipe.components.items():
            if component is None:
                continue
            spec = targets.get(name)
            source = info.model_dir / name
            if spec is None and link_unquantized and source.is_dir():
                os.symlink(source.resolve(), tmp / name, target_is_directory=True)
                formats[name] = "native"
                continue
            formats[name] = _save_component(component, spec, info, name, tmp / name, allow_pickle=allow_pickle)
        settings = default_settings(info.model_ref)
        defaults = info.model_dir / "diffquant.json"
        if defaults.is_file():
            shutil.copy2(defaults, tmp / "diffquant.json")
        elif settings.steps is not None:
            (tmp / "diffquant.json").write_text(json.dumps(
                {"steps": settings.steps, "height": settings.height, "width": settings.width,
                 "guidance_scale": settings.guidance_scale}, indent=2))
        from diffquant.inspect import component_stats
        from diffquant.versions import library_versions

        stats = {n: {"weight_bytes": s.weight_bytes, "params": s.params, "bits_per_weight": round(s.bits_per_weight, 4),
                     "class_name": s.class_name} for n, s in component_stats(pipe).items()}
        (tmp / MARKER).write_text(json.dumps({
            "recipe": info.recipe.to_dict(), "recipe_name": info.recipe.name, "recipe_hash": info.recipe.hash,
            "source_model": info.model_ref, "device": info.device, "diffquant_version": __version__,
            "versions": library_versions(), "components": formats, "weights": stats}, indent=2))
        if not link_unquantized:
            from diffquant.export.card import write_card

            write_card(tmp, card_from=card_from, base_model=base_model, name=out_dir.name)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _save_component(component: Any, spec: QuantSpec | None, info: Any, name: str, folder: Path, *,
                    allow_pickle: bool = False) -> str:
    import torch

    return save_component(component, spec, info.device, getattr(torch, info.recipe.dtype), folder,
                          allow_pickle=allow_pickle)


def is_quantized_export(model_dir: Path) -> bool:
    return (Path(model_dir) / MARKER).is_file()


def load_saved_components(model_dir: Path, dtype: Any, device: str, *, allow_pickle: bool = False) -> dict[str, Any]:
    """Load the components that diffusers cannot load by itself from a ``save_quantized`` folder;
    refuses a folder holding pickles unless ``allow_pickle``."""
    from diffquant.export.safety import refuse_pickles

    refuse_pickles(Path(model_dir), allow_pickle)
    loaded = {}
    for sub in sorted(Path(model_dir).iterdir()):
        marker = sub / COMPONENT_MARKER
        if marker.is_file():
            loaded[sub.name] = load_component(sub, json.loads(marker.read_text()), dtype, device)
    return loaded
