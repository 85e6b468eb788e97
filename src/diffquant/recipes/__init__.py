"""Recipes: what to quantize, how, and with which memory and compile options. No torch import."""

from diffquant.recipes.catalog import BACKENDS, SEED_RECIPES
from diffquant.recipes.model import DEFAULT_TARGET, SCHEMA_VERSION, CompileSpec, MemorySpec, QuantSpec, Recipe
from diffquant.recipes.parse import format_recipe, parse_recipe
from diffquant.recipes.toml_io import load_recipe, recipe_from_toml, recipe_to_toml

__all__ = [
    "BACKENDS", "DEFAULT_TARGET", "SCHEMA_VERSION", "SEED_RECIPES", "CompileSpec", "MemorySpec", "QuantSpec",
    "Recipe", "format_recipe", "load_recipe", "parse_recipe", "recipe_from_toml", "recipe_to_toml",
]
