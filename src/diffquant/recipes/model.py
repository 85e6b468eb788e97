"""The Recipe: a frozen dataclass with a schema version, a stable content hash, its dict form
(``to_dict`` / ``from_dict``) and its canonical string (``name``; ``parse.parse_recipe`` reads it back).

A recipe says, per pipeline component, how to quantize it (``QuantSpec``), plus memory options
(``MemorySpec``) and compile options (``CompileSpec``); those parts live in ``specs.py``, below the
checks (``validate.py``) and the dict form (``dict_form.py``) that this module builds on.
No torch import here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from diffquant.recipes import catalog as cat
from diffquant.recipes.dict_form import recipe_fields_from_dict
from diffquant.recipes.specs import (
    DEFAULT_TARGET,
    SCHEMA_VERSION,
    CompileSpec,
    MemorySpec,
    OptionValue,
    QuantSpec,
    quant_token,
)
from diffquant.recipes.validate import check_recipe

__all__ = ["DEFAULT_TARGET", "SCHEMA_VERSION", "CompileSpec", "MemorySpec", "OptionValue", "QuantSpec", "Recipe",
           "format_recipe", "recipe_from_dict"]


@dataclass(frozen=True)
class Recipe:
    """A complete, hashable description of how to load and run a pipeline."""

    quant: tuple[QuantSpec, ...] = ()
    memory: MemorySpec = field(default_factory=MemorySpec)
    compile: CompileSpec = field(default_factory=CompileSpec)
    dtype: str = "bfloat16"  # compute / unquantized weights dtype
    schema_version: int = SCHEMA_VERSION

    @property
    def name(self) -> str:
        """The canonical recipe string (parses back to an equal Recipe)."""
        return format_recipe(self)

    @property
    def hash(self) -> str:
        """Stable content hash: equal recipes hash equal across processes and versions of Python."""
        payload = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def is_quantized(self) -> bool:
        return bool(self.quant)

    def spec_for(self, target: str) -> QuantSpec | None:
        for spec in self.quant:
            if spec.target == target:
                return spec
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version, "dtype": self.dtype,
                "quant": [q.to_dict() for q in self.quant],
                "memory": self.memory.to_dict(), "compile": self.compile.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Build and validate a Recipe from its dict form (as written by ``to_dict``/TOML)."""
        recipe = cls(**recipe_fields_from_dict(data))
        check_recipe(recipe)
        return recipe

    def __str__(self) -> str:
        return self.name


def recipe_from_dict(data: object) -> Recipe:
    """Build and validate a Recipe from its dict form (``Recipe.to_dict``, TOML once parsed)."""
    return Recipe.from_dict(data)


# --- the canonical string (parse.parse_recipe reads it back) ----------------------------------------

def _format_options(pairs: list[tuple[str, OptionValue]]) -> str:
    if not pairs:
        return ""
    items = [k if v is True else f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in pairs]
    return "(" + ",".join(items) + ")"


def _format_quant(spec: QuantSpec) -> str:
    name = quant_token(spec)
    pairs = list(spec.options)
    if spec.skip_modules:
        pairs.append(("skip", "|".join(spec.skip_modules)))
    text = name + _format_options(sorted(pairs))
    return text if spec.target == DEFAULT_TARGET else f"{text}@{spec.target}"


def format_recipe(recipe: Recipe) -> str:
    """The canonical string of a recipe (``parse_recipe(format_recipe(r)) == r``)."""
    tokens: list[str] = []
    dtype_token = {v: k for k, v in cat.DTYPES.items()}[recipe.dtype]
    if not recipe.quant or recipe.dtype != "bfloat16":
        tokens.append(dtype_token)
    tokens += [_format_quant(q) for q in recipe.quant]
    mem = recipe.memory
    if mem.offload != "none":
        name = {v: k for k, v in cat.OFFLOAD_TOKENS.items() if k != "offload-sequential"}[mem.offload]
        pairs: list[tuple[str, OptionValue]] = []
        if mem.offload == "group-block" and mem.blocks_per_group != 1:
            pairs.append(("blocks", mem.blocks_per_group))
        if mem.offload_to_disk:
            pairs.append(("disk", True))
        if mem.use_stream:
            pairs.append(("stream", True))
        tokens.append(name + _format_options(pairs))
    tokens += [tok for tok, attr in cat.VAE_TOKENS.items() if getattr(mem, attr)]
    if recipe.compile.enabled:
        pairs = []
        if recipe.compile.fullgraph:
            pairs.append(("fullgraph", True))
        if recipe.compile.mode != "default":
            pairs.append(("mode", recipe.compile.mode))
        if recipe.compile.regional:
            pairs.append(("regional", True))
        if recipe.compile.components != cat.DEFAULT_COMPILE_COMPONENTS:
            pairs.append(("components", "|".join(recipe.compile.components)))
        tokens.append("compile" + _format_options(pairs))
    return "+".join(tokens)
