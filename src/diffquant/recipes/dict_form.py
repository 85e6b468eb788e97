"""The dict form of a recipe (``Recipe.to_dict``, and TOML once parsed): TOML's own types only.

``vae_tiling = "false"``, ``blocks_per_group = "2"`` and ``skip_modules = "proj_out"`` are refused
with the spelling to write instead; nothing is guessed, so a string never becomes a boolean or a
list of letters. Each refusal names the field (``memory.vae_tiling``, ``quant[0].options.keep``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffquant.errors import DiffquantError, unknown_choice
from diffquant.recipes import catalog as cat
from diffquant.recipes.specs import (
    DEFAULT_TARGET,
    SCHEMA_VERSION,
    CompileSpec,
    MemorySpec,
    OptionValue,
    QuantSpec,
    quant_token,
)
from diffquant.recipes.validate import (
    FALSE_WORDS,
    compile_components,
    describe,
    field_error,
    option_from_data,
    quant_options,
    skip_patterns,
)

_DOCS = "see docs/recipes.md"

_QUANT_FIELDS = ("backend", "type", "target", "options", "skip_modules")


def _table(field: str, value: object, example: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise field_error(field, value, "a table", example)
    return value


def _known(field: str, table: Mapping[str, Any], known: tuple[str, ...] | list[str]) -> None:
    for key in table:
        if key not in known:
            raise unknown_choice(f"{field} field" if field else "recipe field", str(key), known,
                                 hint=f"{_DOCS} for the fields")


def _bool(field: str, table: Mapping[str, Any], key: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise field_error(f"{field}.{key}", value, "true or false (a TOML boolean, without quotes)",
                          f"{key} = {'false' if str(value).lower() in FALSE_WORDS else 'true'}")
    return value


def _str(field: str, value: object, choices: tuple[str, ...] | list[str], example: str) -> str:
    if not isinstance(value, str):
        raise field_error(field, value, f"a string, one of {', '.join(choices)}", example)
    if value not in choices:
        raise unknown_choice(f"value for {field}", value, choices, hint=f"write e.g. {example}")
    return value


def _names(field: str, value: object, example: str) -> list[str]:
    if isinstance(value, str):
        raise DiffquantError(f"Recipe field {field} must be a list of names; got {describe(value)}.",
                             hint=f'write a list, even of one name: {field.split(".")[-1]} = ["{value}"]')
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise field_error(field, value, "a list of names (strings)", example)
    return list(value)


def _quant_from_dict(index: int, item: object) -> QuantSpec:
    field = f"quant[{index}]"
    table = _table(field, item, '[[quant]] with backend = "bnb" and type = "nf4"')
    _known("quant", table, _QUANT_FIELDS)
    if "backend" not in table or "type" not in table:
        raise DiffquantError("Each [[quant]] entry needs 'backend' and 'type'.",
                             hint='e.g. backend = "bnb", type = "nf4"')
    name = table["backend"]
    if not isinstance(name, str):
        raise field_error(f"{field}.backend", name, "a string", 'backend = "bnb"')
    backend = cat.BACKENDS.get(name.lower())
    if backend is None:
        raise unknown_choice(f"{field}.backend", name, cat.BACKENDS, hint='e.g. backend = "bnb"')
    qtype = table["type"]
    if not isinstance(qtype, str):
        raise field_error(f"{field}.type", qtype, "a string", f'type = "{next(iter(backend.types))}"')
    qtype = qtype.lower()
    if qtype not in backend.types:
        raise unknown_choice(f"{backend.title} type", qtype, backend.types,
                             hint=f'e.g. type = "{next(iter(backend.types))}"')
    target = table.get("target", DEFAULT_TARGET)
    if not isinstance(target, str):
        raise field_error(f"{field}.target", target, "a component name", 'target = "transformer"')
    options = _table(f"{field}.options", table.get("options", {}), "options = { double_quant = true }")
    token = quant_token(QuantSpec(backend.name, qtype))
    typed: dict[str, OptionValue] = {}
    for key, value in options.items():
        odef = backend.options.get(key) if key != "skip" else None
        typed[key] = option_from_data(f"{field}.options.{key}", value, odef) if odef else value
    skip = _names(f"{field}.skip_modules", table.get("skip_modules", []), 'skip_modules = ["proj_out"]')
    spec = QuantSpec(backend=backend.name, qtype=qtype, target=target,
                     options=quant_options(token, backend, qtype, typed),
                     skip_modules=skip_patterns(token, "|".join(skip)) if skip else ())
    return spec


def recipe_fields_from_dict(data: object) -> dict[str, Any]:
    """The checked fields of a Recipe from its dict form (as written by ``Recipe.to_dict``/TOML), as
    keyword arguments; ``Recipe.from_dict`` builds the recipe from them and runs the whole-recipe checks."""
    data = _table("(the recipe)", data, 'a table with dtype = "bfloat16" and [[quant]] entries')
    version = data.get("schema_version", SCHEMA_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise field_error("schema_version", version, f"a whole number from 1 to {SCHEMA_VERSION}",
                          f"schema_version = {SCHEMA_VERSION}")
    if version > SCHEMA_VERSION:
        raise DiffquantError(f"Recipe schema version {version} is newer than this diffquant's "
                             f"({SCHEMA_VERSION}).", hint="upgrade diffquant")
    _known("", data, ["schema_version", "dtype", "quant", "memory", "compile"])
    dtype = _str("dtype", data.get("dtype", "bfloat16"), list(cat.DTYPES.values()), 'dtype = "bfloat16"')
    items = data.get("quant", [])
    if not isinstance(items, (list, tuple)):
        raise field_error("quant", items, "a list of [[quant]] tables",
                          '[[quant]] then backend = "bnb" and type = "nf4" on the next lines')
    quant = [_quant_from_dict(i, item) for i, item in enumerate(items)]
    mem = _table("memory", data.get("memory", {}), '[memory] then offload = "group-leaf"')
    _known("memory", mem, list(MemorySpec().to_dict()))
    blocks = mem.get("blocks_per_group", 1)
    if isinstance(blocks, bool) or not isinstance(blocks, int):
        raise field_error("memory.blocks_per_group", blocks, "a whole number from 1 to 1024 (without quotes)",
                          "blocks_per_group = 2")
    modes = ["none", *dict.fromkeys(cat.OFFLOAD_TOKENS.values())]
    memory = MemorySpec(offload=_str("memory.offload", mem.get("offload", "none"), modes, 'offload = "group-leaf"'),
                        blocks_per_group=blocks, use_stream=_bool("memory", mem, "use_stream", False),
                        offload_to_disk=_bool("memory", mem, "offload_to_disk", False),
                        vae_tiling=_bool("memory", mem, "vae_tiling", False),
                        vae_slicing=_bool("memory", mem, "vae_slicing", False))
    comp = _table("compile", data.get("compile", {}), "[compile] then enabled = true")
    _known("compile", comp, [*CompileSpec().to_dict(), "regional"])  # regional: written only when set
    components = _names("compile.components", comp.get("components", list(cat.DEFAULT_COMPILE_COMPONENTS)),
                        'components = ["denoiser"]')
    compile_spec = CompileSpec(
        enabled=_bool("compile", comp, "enabled", False),
        mode=_str("compile.mode", comp.get("mode", "default"), cat.COMPILE_MODES, 'mode = "max-autotune"'),
        fullgraph=_bool("compile", comp, "fullgraph", False),
        regional=_bool("compile", comp, "regional", False),
        components=compile_components("|".join(components)) if components else ())
    return {"quant": tuple(sorted(quant, key=lambda q: (q.target != DEFAULT_TARGET, q.target))),
            "memory": memory, "compile": compile_spec, "dtype": dtype, "schema_version": SCHEMA_VERSION}
