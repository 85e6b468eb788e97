"""Generation defaults of a model (steps, size, guidance, pipeline arguments): a diffquant.json in
its folder wins, then the zoo's and the known pipeline classes' defaults. No torch here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Defaults for pipelines we know (zoo models carry their own: ``ZooEntry.defaults``).
_CLASS_DEFAULTS = {
    "FluxPipeline": (28, 1024, 1024, 3.5),
    "StableDiffusion3Pipeline": (28, 1024, 1024, 7.0),
}


@dataclass(frozen=True)
class GenerationSettings:
    steps: int | None
    height: int | None
    width: int | None
    guidance_scale: float | None
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)


def default_settings(model: str) -> GenerationSettings:
    """Model-appropriate generation defaults (a diffquant.json in the folder wins)."""
    from diffquant.components import pipeline_class_name, resolve_model
    from diffquant.zoo import zoo_defaults
    from diffquant.zoo.meta import read_model_meta

    model_dir = resolve_model(model)
    meta = read_model_meta(model_dir)  # validated: a malformed file is a DiffquantError
    if meta is not None:
        return GenerationSettings(meta.steps, meta.height, meta.width, meta.guidance_scale,
                                  dict(meta.pipeline_kwargs))
    values = zoo_defaults(model) or _CLASS_DEFAULTS.get(pipeline_class_name(model_dir))
    return GenerationSettings(*values) if values else GenerationSettings(None, None, None, None)
