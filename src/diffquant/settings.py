"""Generation defaults of a model (steps, size, guidance, pipeline arguments): a diffquant.json in
its folder wins, then the zoo's and the known pipeline classes' defaults. No torch here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Defaults for pipelines we know; zoo models are tiny so their defaults are small.
_CLASS_DEFAULTS = {
    "FluxPipeline": (28, 1024, 1024, 3.5),
    "StableDiffusion3Pipeline": (28, 1024, 1024, 7.0),
}
_ZOO_DEFAULTS = {
    "tiny-flux": (4, 64, 64, 3.5), "tiny-sd3": (4, 64, 64, 5.0), "flux-dev-slice": (4, 256, 256, 3.5),
    "flux-dev-random": (28, 1024, 1024, 3.5),
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
    from diffquant.zoo.meta import read_model_meta

    model_dir = resolve_model(model)
    meta = read_model_meta(model_dir)  # validated: a malformed file is a DiffquantError
    if meta is not None:
        return GenerationSettings(meta.steps, meta.height, meta.width, meta.guidance_scale,
                                  dict(meta.pipeline_kwargs))
    name = model.removeprefix("zoo:") if model.startswith("zoo:") else None
    values = _ZOO_DEFAULTS.get(name or "") or _CLASS_DEFAULTS.get(pipeline_class_name(model_dir))
    return GenerationSettings(*values) if values else GenerationSettings(None, None, None, None)
