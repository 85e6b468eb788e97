"""The exact part of a plan: the bytes each component stores under a recipe, asked of each
backend's ``stored_bytes`` (its real storage format and its real choice of layers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffquant.components import Component, denoiser_name, resolve_targets
from diffquant.recipes.model import Recipe


@dataclass(frozen=True)
class ComponentBytes:
    name: str
    class_name: str
    quant: str  # "backend-type", or "" when the component stays in the recipe's dtype
    stored_bytes: int  # parameters and buffers as loaded, quantization state included
    plain_bytes: int  # the same component unquantized (the recipe's dtype)
    params: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "class_name": self.class_name, "quant": self.quant,
                "stored_bytes": self.stored_bytes, "plain_bytes": self.plain_bytes, "params": self.params}


def plain_bytes(model: Any) -> int:
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def component_bytes(folder: Path, components: dict[str, Component], models: dict[str, Any],
                    recipe: Recipe, device: str) -> dict[str, ComponentBytes]:
    """Stored bytes of every model component of the pipeline under ``recipe``."""
    from diffquant.backends import get_backend
    from diffquant.backends.base import ComponentContext

    targets = resolve_targets(recipe, components)
    denoiser = denoiser_name(components)
    out: dict[str, ComponentBytes] = {}
    for name, model in models.items():
        comp = components[name]
        plain = plain_bytes(model)
        params = sum(p.numel() for p in model.parameters())
        spec = targets.get(name)
        if spec is None:
            out[name] = ComponentBytes(name, comp.class_name, "", plain, plain, params)
            continue
        ctx = ComponentContext(name=name, library=comp.library, class_name=comp.class_name,
                               model_dir=str(folder), dtype=model.dtype, device=device,
                               is_denoiser=name == denoiser)
        stored = get_backend(spec.backend).stored_bytes(spec, model, ctx)
        out[name] = ComponentBytes(name, comp.class_name, f"{spec.backend}-{spec.qtype}", stored, plain, params)
    return out
