"""The TOML form of a recipe: the same fields as ``Recipe.to_dict``, typed by TOML itself.

Values keep their TOML types: ``vae_tiling = "false"`` (a string) and ``blocks_per_group = "2"``
are refused with the fix, never read as a boolean or a number; ``skip_modules`` is a list of names
(``skip_modules = "proj_out"`` is refused: write ``["proj_out"]``). See ``model.recipe_from_dict``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from diffquant.errors import DiffquantError
from diffquant.recipes.model import Recipe, recipe_from_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def recipe_to_toml(recipe: Recipe) -> str:
    import tomli_w

    return tomli_w.dumps(recipe.to_dict())


def recipe_from_toml(text: str) -> Recipe:
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise DiffquantError(f"Recipe TOML does not parse: {exc}.", hint="check the file's syntax") from None
    return recipe_from_dict(data)


def load_recipe(ref: str | Path | Recipe) -> Recipe:
    """A Recipe from a recipe string, a path to a .toml file, or a Recipe (returned as is)."""
    if isinstance(ref, Recipe):
        return ref
    text = str(ref)
    if text.endswith(".toml"):
        path = Path(text)
        if not path.is_file():
            raise DiffquantError(f"Recipe file {text!r} not found.", hint="give an existing .toml path")
        try:
            content = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DiffquantError(f"Cannot read recipe file {text!r}: {exc}.",
                                 hint="give a UTF-8 .toml file") from None
        return recipe_from_toml(content)
    from diffquant.recipes.parse import parse_recipe

    return parse_recipe(text)
