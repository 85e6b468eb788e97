"""What diffquant records about a pipeline it loaded (model, recipe, device, what was quantized,
notes and counters), attached to the pipeline object. No torch here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffquant.errors import DiffquantError
from diffquant.recipes.model import Recipe


@dataclass
class LoadInfo:
    model_ref: str
    model_dir: Path
    recipe: Recipe
    device: str
    quantized: dict[str, str]  # component -> backend-type
    quant_cache_used: bool = False
    load_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    counters: dict[str, Any] = field(default_factory=dict)  # e.g. load.released_file_tensors


def load_info(pipe: Any) -> LoadInfo:
    info = getattr(pipe, "_diffquant_load_info", None)
    if info is None:
        raise DiffquantError("This pipeline was not loaded by diffquant.load_pipeline.",
                             hint="load it with diffquant.load_pipeline(model, recipe)")
    return info
