"""diffquant: pick a quantization recipe for a diffusion pipeline and see what it costs.

Importing this package is cheap on purpose: no torch, no diffusers, no backend and no CUDA
initialisation happens until a function that needs them is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from diffquant._version import __version__
from diffquant.errors import DiffquantError

if TYPE_CHECKING:  # pragma: no cover
    from diffquant.recipes import Recipe

__all__ = ["DiffquantError", "__version__", "load_pipeline", "parse_recipe"]


def load_pipeline(model: str, recipe: str | Recipe = "bf16", **kwargs: Any) -> Any:
    """Load a diffusers pipeline (Hub id, local folder or ``zoo:NAME``) with a recipe applied."""
    from diffquant.pipeline import load_pipeline as _load

    return _load(model, recipe, **kwargs)


def parse_recipe(text: str) -> Recipe:
    """Parse a recipe string such as ``bnb-nf4+offload-group-leaf`` (no torch import)."""
    from diffquant.recipes import parse_recipe as _parse

    return _parse(text)
