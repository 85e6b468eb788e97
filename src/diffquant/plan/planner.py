"""Plan a model under a list of recipes: exact weights per component, modelled runtime memory."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffquant.plan.runtime import MemoryPlan, RunShape, memory_plan, read_configs, run_shapes
from diffquant.plan.weights import ComponentBytes, component_bytes
from diffquant.recipes.model import Recipe

# Memory does not depend on compile or on most memory options; these run on CPU and CUDA alike.
CPU_RECIPES: tuple[str, ...] = (
    "bf16", "bnb-nf4", "bnb-int8", "torchao-int8wo", "torchao-fp8wo", "quanto-int4", "quanto-int8",
    "quanto-fp8", "gguf-q2_k", "gguf-q4_k", "gguf-q8_0", "fp8-layerwise", "bf16+offload-group-leaf(disk)",
    "bnb-nf4+offload-group-leaf(disk)",
)


@dataclass(frozen=True)
class RecipePlan:
    recipe: str
    recipe_hash: str
    runs_here: bool
    why_not: str | None
    components: dict[str, ComponentBytes]
    memory: MemoryPlan | None  # None when the recipe does not apply to this model (e.g. GGUF @text encoder)

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "recipe_hash": self.recipe_hash, "runs_here": self.runs_here,
                "why_not": self.why_not,
                "components": {n: c.to_dict() for n, c in self.components.items()},
                "memory": self.memory.to_dict() if self.memory else None}


@dataclass(frozen=True)
class ModelPlan:
    model: str
    pipeline_class: str
    device: str
    shape: RunShape
    recipes: list[RecipePlan] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "diffquant.plan/1", "model": self.model, "pipeline_class": self.pipeline_class,
                "device": self.device, "shape": self.shape.to_dict(),
                "recipes": [r.to_dict() for r in self.recipes]}

    def get(self, recipe: str) -> RecipePlan | None:
        for r in self.recipes:
            if r.recipe == recipe:
                return r
        return None


def default_recipes(device: str) -> list[str]:
    from diffquant.recipes import SEED_RECIPES

    return list(SEED_RECIPES) if device.startswith("cuda") else list(CPU_RECIPES)


def model_defaults(model: str, folder: Path, pipeline_class: str) -> tuple[int, int, int, int | None]:
    """(height, width, steps, text tokens) the model runs at by default, read without loading it."""
    from diffquant.settings import _CLASS_DEFAULTS
    from diffquant.zoo import zoo_defaults

    meta = folder / "diffquant.json"
    if meta.is_file():
        data = json.loads(meta.read_text())
        size = data.get("size") or [data.get("height"), data.get("width")]
        tokens = (data.get("pipeline_kwargs") or {}).get("max_sequence_length")
        return int(size[0] or 1024), int(size[1] or 1024), int(data.get("steps") or 28), tokens
    values = zoo_defaults(model) or _CLASS_DEFAULTS.get(pipeline_class) or (28, 1024, 1024, None)
    return int(values[1]), int(values[2]), int(values[0]), None


def plan_model(model: str, recipes: Sequence[str | Recipe] | None = None, *, device: str = "cuda",
               height: int | None = None, width: int | None = None, steps: int | None = None,
               batch: int = 1) -> ModelPlan:
    """Predict every recipe's memory for ``model`` (local folder, zoo:NAME or Hub id: configs only)."""
    import torch

    from diffquant.backends import why_not_here
    from diffquant.components import denoiser_name, pipeline_class_name, read_components
    from diffquant.errors import DiffquantError
    from diffquant.plan.meta import meta_components
    from diffquant.plan.source import config_folder
    from diffquant.recipes import load_recipe

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise DiffquantError(f"Unknown device {device!r}.", choices=["cpu", "cuda"], given=device)
    folder = config_folder(model)
    components = read_components(folder)
    pipeline_class = pipeline_class_name(folder)
    denoiser = denoiser_name(components)
    h, w, s, tokens = model_defaults(model, folder, pipeline_class)
    shape = run_shapes(pipeline_class, height or h, width or w, steps or s, batch, tokens)
    configs = read_configs(folder, list(components))
    parsed = [load_recipe(r) for r in (recipes or default_recipes(device))]
    models_by_dtype: dict[str, dict[str, Any]] = {}
    plans = []
    for recipe in parsed:
        if recipe.dtype not in models_by_dtype:
            models_by_dtype[recipe.dtype] = meta_components(folder, components, getattr(torch, recipe.dtype))
        models = models_by_dtype[recipe.dtype]
        reason = why_not_here(recipe, "cuda" if device.startswith("cuda") else device)
        try:
            comps = component_bytes(folder, components, models, recipe, device)
        except DiffquantError as exc:
            plans.append(RecipePlan(recipe.name, recipe.hash, False, exc.what, {}, None))
            continue
        memory = memory_plan(recipe, device, comps, models, configs, shape, denoiser)
        plans.append(RecipePlan(recipe.name, recipe.hash, reason is None, reason, comps, memory))
    return ModelPlan(model=model, pipeline_class=pipeline_class, device=device, shape=shape, recipes=plans)
