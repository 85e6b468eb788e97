"""Checks shared by the string and TOML forms: known options of the right type, no contradictions."""

from __future__ import annotations

from typing import Any

from diffquant.errors import DiffquantError, unknown_choice
from diffquant.recipes import catalog as cat
from diffquant.recipes.model import (
    DEFAULT_TARGET,
    SCHEMA_VERSION,
    CompileSpec,
    MemorySpec,
    OptionValue,
    QuantSpec,
    Recipe,
)


def check_options(token: str, opts: dict[str, OptionValue], allowed: dict[str, cat.OptionDef]) -> None:
    for key, value in opts.items():
        if key not in allowed:
            if not allowed:
                raise DiffquantError(f"{token!r} takes no options (got {key!r}).", hint=f"write just {token}")
            raise unknown_choice(f"option for {token!r}", key, allowed,
                                 hint="options go in parentheses: token(key=value,flag)")
        spec = allowed[key]
        if spec.kind is bool and not isinstance(value, bool):
            raise DiffquantError(f"Option {key!r} of {token!r} is a flag; got {value!r}.",
                                 hint=f"write {token}({key}) or {key}=false")
        if spec.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise DiffquantError(f"Option {key!r} of {token!r} needs a whole number; got {value!r}.",
                                 hint=f"e.g. {token}({key}=64)")
        if spec.kind is str and isinstance(value, bool):
            raise DiffquantError(f"Option {key!r} of {token!r} needs a value.", hint=f"write {key}=VALUE")
        if spec.choices and str(value) not in spec.choices:
            raise unknown_choice(f"value for {token}({key})", str(value), spec.choices)


def check_recipe(recipe: Recipe) -> None:
    """Cross-token contradictions, for any way the recipe was built."""
    targets = [q.target for q in recipe.quant]
    dupes = sorted({t for t in targets if targets.count(t) > 1})
    if dupes:
        raise DiffquantError(f"Component(s) {', '.join(dupes)} quantized twice in one recipe.",
                             hint="give each component one quantization (use @component to pick)")
    if recipe.dtype not in cat.DTYPES.values():
        raise unknown_choice("dtype", recipe.dtype, cat.DTYPES.values())
    mem = recipe.memory
    if mem.offload not in ("none", *cat.OFFLOAD_TOKENS.values()):
        raise unknown_choice("offload mode", mem.offload, ["none", *set(cat.OFFLOAD_TOKENS.values())])
    if (mem.use_stream or mem.offload_to_disk) and not mem.offload.startswith("group"):
        raise DiffquantError("stream/disk options need group offload.",
                             hint="use offload-group-leaf(stream) or offload-group-block(disk)")
    if mem.blocks_per_group < 1:
        raise DiffquantError("offload-group-block needs blocks >= 1.", hint="e.g. offload-group-block(blocks=2)")
    if recipe.compile.mode not in cat.COMPILE_MODES:
        raise unknown_choice("compile mode", recipe.compile.mode, cat.COMPILE_MODES)
    if recipe.compile.enabled and mem.offload == "sequential":
        raise DiffquantError("compile and offload-seq contradict: sequential offload moves every weight "
                             "per call through hooks that torch.compile cannot trace.",
                             hint="use offload-model or offload-group-leaf with compile")
    for spec in recipe.quant:
        backend = cat.BACKENDS.get(spec.backend)
        if backend is None:
            raise unknown_choice("backend", spec.backend, cat.BACKENDS)
        if spec.qtype not in backend.types:
            raise unknown_choice(f"{backend.title} type", spec.qtype, backend.types)
        check_options(spec.backend, dict(spec.options), backend.options)
        if spec.backend == "bnb" and spec.option("double_quant") and spec.qtype == "int8":
            raise DiffquantError("double_quant only applies to bnb 4-bit types (nf4, fp4).",
                                 hint="drop double_quant, or use bnb-nf4(double_quant)")
        if spec.backend == "gguf" and spec.option("path") and spec.option("keep"):
            raise DiffquantError("gguf 'keep' patterns only apply when diffquant writes the file; "
                                 "a given path is loaded as it is.", hint="drop keep= or path=")


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Build and validate a Recipe from its dict form (as written by ``Recipe.to_dict``/TOML)."""
    version = int(data.get("schema_version", SCHEMA_VERSION))
    if version > SCHEMA_VERSION:
        raise DiffquantError(f"Recipe schema version {version} is newer than this diffquant's "
                             f"({SCHEMA_VERSION}).", hint="upgrade diffquant")
    known = {"schema_version", "dtype", "quant", "memory", "compile"}
    unknown = set(data) - known
    if unknown:
        raise unknown_choice("recipe field", min(unknown), known)
    quant = []
    for item in data.get("quant", []):
        item = dict(item)
        bad = set(item) - {"backend", "type", "target", "options", "skip_modules"}
        if bad:
            raise unknown_choice("quant field", min(bad), ["backend", "type", "target", "options",
                                                                 "skip_modules"])
        if "backend" not in item or "type" not in item:
            raise DiffquantError("Each [[quant]] entry needs 'backend' and 'type'.",
                                 hint='e.g. backend = "bnb", type = "nf4"')
        quant.append(QuantSpec(backend=str(item["backend"]), qtype=str(item["type"]).lower(),
                               target=str(item.get("target", DEFAULT_TARGET)),
                               options=tuple(sorted(dict(item.get("options", {})).items())),
                               skip_modules=tuple(item.get("skip_modules", ()))))
    mem = dict(data.get("memory", {}))
    comp = dict(data.get("compile", {}))
    try:
        memory = MemorySpec(**mem)
        compile_spec = CompileSpec(**{**comp, "components": tuple(comp.get("components", ("denoiser",)))})
    except TypeError as exc:
        raise DiffquantError(f"Bad [memory] or [compile] field: {exc}.",
                             hint="see docs/recipes.md for the fields") from None
    recipe = Recipe(quant=tuple(sorted(quant, key=lambda q: (q.target != DEFAULT_TARGET, q.target))),
                    memory=memory, compile=compile_spec, dtype=str(data.get("dtype", "bfloat16")),
                    schema_version=SCHEMA_VERSION)
    check_recipe(recipe)
    return recipe
