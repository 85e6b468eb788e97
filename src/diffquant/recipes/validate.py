"""Checks shared by the string and the TOML/dict forms of a recipe.

Every value is typed before a Recipe is built: flags are booleans, counts are whole numbers in
range, names and patterns use the characters the string form can carry, and each option is
allowed only on the backend types that use it (so it cannot change the hash for nothing). The
string form reads option text by each option's declared kind (``option_from_text``); the dict form
takes TOML's own types and refuses look-alikes (``"false"``, ``"2"``; ``dict_form.py``): it never guesses.
Errors name the field, what was given, the valid choices or range, and an example.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from diffquant.errors import DiffquantError, unknown_choice
from diffquant.recipes import catalog as cat
from diffquant.recipes.specs import (
    DEFAULT_TARGET,
    CompileSpec,
    MemorySpec,
    OptionValue,
    QuantSpec,
    RecipeFields,
    quant_token,
)

NAME = re.compile(r"[A-Za-z0-9_]+")  # component names (targets, compile components)
PATTERN = re.compile(r"[A-Za-z0-9_.*?!\[\]-]+")  # module-name patterns (skip, GGUF keep)
_INT_TEXT = re.compile(r"[+-]?[0-9]{1,18}")
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on"), ("false", "no", "off")
_BAD_TEXT = re.compile(r"[(),\x00-\x1f\x7f]")  # what a string-form option value cannot hold


def describe(value: object) -> str:
    """'the string "false"', 'the number 5', 'a list': what the user gave, in words."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def field_error(field: str, given: object, expected: str, example: str) -> DiffquantError:
    return DiffquantError(f"Recipe field {field} must be {expected}; got {describe(given)}.",
                          hint=f"write e.g. {example}")


# --- option values -------------------------------------------------------------------------------

def option_from_text(token: str, key: str, raw: str | None, odef: cat.OptionDef) -> OptionValue:
    """A string-form option (``raw`` None for a bare flag) read by the option's declared kind."""
    if odef.kind is bool:
        if raw is None or raw.lower() in TRUE_WORDS:
            return True
        if raw.lower() in FALSE_WORDS:
            return False
        raise DiffquantError(f"Option {key!r} of {token!r} is a flag; got {raw!r}.",
                             hint=f"write {token}({key}) to turn it on, or leave it out")
    if odef.kind is int:
        if raw is None or not _INT_TEXT.fullmatch(raw):
            raise DiffquantError(f"Option {key!r} of {token!r} needs a whole number; got "
                                 f"{'nothing' if raw is None else repr(raw)}.",
                                 hint=f"e.g. {token}({key}={_int_example(odef)})")
        return int(raw)
    if not raw:
        raise DiffquantError(f"Option {key!r} of {token!r} needs a value.", hint=f"write {token}({key}=VALUE)")
    return raw


def option_from_data(field: str, value: object, odef: cat.OptionDef) -> OptionValue:
    """A dict/TOML option value: TOML's own types only."""
    if odef.kind is bool:
        if not isinstance(value, bool):
            raise field_error(field, value, "true or false (a TOML boolean, without quotes)",
                              f"{odef.name} = true")
        return value
    if odef.kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise field_error(field, value, "a whole number (without quotes)",
                              f"{odef.name} = {_int_example(odef)}")
        return value
    if not isinstance(value, str):
        raise field_error(field, value, "a string", f'{odef.name} = "{odef.choices[0] if odef.choices else "..."}"')
    return value


def _int_example(odef: cat.OptionDef) -> int:
    return odef.int_choices[len(odef.int_choices) // 2] if odef.int_choices else max(odef.minimum or 1, 2)


def check_value(token: str, key: str, value: OptionValue, odef: cat.OptionDef) -> None:
    """Range, choices and spelling of one typed option value."""
    where = f"{token}({key})"
    if odef.kind is int:
        if odef.int_choices and value not in odef.int_choices:
            raise DiffquantError(f"{where}: {value!r} is not allowed; {key} must be one of "
                                 f"{', '.join(map(str, odef.int_choices))}.",
                                 hint=f"e.g. {token}({key}={_int_example(odef)})")
        low, high = odef.minimum, odef.maximum
        if (low is not None and value < low) or (high is not None and value > high):  # type: ignore[operator]
            raise DiffquantError(f"{where}: {value!r} is out of range; it must be between {low} and {high}.",
                                 hint=f"e.g. {token}({key}={_int_example(odef)})")
    if odef.kind is str:
        text = str(value)
        if odef.choices and text not in odef.choices:
            raise unknown_choice(f"value for {where}", text, odef.choices,
                                 hint=f"e.g. {token}({key}={odef.choices[0]})")
        if text != text.strip() or _BAD_TEXT.search(text):
            raise DiffquantError(f"{where}: {text!r} holds a character a recipe cannot carry "
                                 "(parentheses, commas, control characters or outer spaces).",
                                 hint="rename the file or pattern without them")


def _split_names(token: str, key: str, text: str, pattern: re.Pattern[str], example: str) -> tuple[str, ...]:
    """'a|b' -> ('a', 'b'); every item non-empty, well formed and given once."""
    items = tuple(p.strip() for p in text.split("|"))
    for item in items:
        if not pattern.fullmatch(item):
            raise DiffquantError(f"{token}({key}): {item!r} is not a valid name in {text!r}.",
                                 hint=f"separate names with '|' and use letters, digits and _ . * ? [ ] -, "
                                      f"e.g. {example}")
    twice = sorted({i for i in items if items.count(i) > 1})
    if twice:
        raise DiffquantError(f"{token}({key}): {', '.join(twice)} given twice in {text!r}.",
                             hint="give each name once")
    return items


def skip_patterns(token: str, text: str) -> tuple[str, ...]:
    return _split_names(token, "skip", text, PATTERN, f"{token}(skip=proj_out|norm_out)")


def compile_components(text: str) -> tuple[str, ...]:
    return _split_names("compile", "components", text, NAME, "compile(components=denoiser|vae)")


def normalize_keep(token: str, text: str) -> str:
    """GGUF keep patterns 'norm|*.mod*=q8_0' -> 'norm|*.mod*=Q8_0', checked as the writer will read them."""
    items: list[str] = []
    for raw in text.split("|"):
        pattern, sep, qtype = (s.strip() for s in raw.partition("="))
        if not PATTERN.fullmatch(pattern) or pattern.count("[") != pattern.count("]"):
            raise DiffquantError(f"{token}(keep): bad pattern {pattern!r} in {text!r}.",
                                 hint=f"write PATTERN or PATTERN=TYPE separated by '|', e.g. "
                                      f"{token}(keep=norm|*.mod*=Q8_0)")
        if sep:
            if qtype.upper() not in cat.GGUF_KEEP_TYPES:
                raise DiffquantError(f"{token}(keep): unknown GGUF type {qtype!r} for pattern {pattern!r}.",
                                     choices=cat.GGUF_KEEP_TYPES, given=qtype.upper(),
                                     hint=f"e.g. {token}(keep={pattern}=Q8_0)")
            pattern = f"{pattern}={qtype.upper()}"
        items.append(pattern)
    patterns = [i.split("=")[0] for i in items]
    twice = sorted({p for p in patterns if patterns.count(p) > 1})
    if twice:
        raise DiffquantError(f"{token}(keep): pattern(s) {', '.join(twice)} given twice.",
                             hint="give each pattern once (the first match wins)")
    return "|".join(items)


def quant_options(token: str, backend: cat.BackendDef, qtype: str,
                  opts: Mapping[str, OptionValue]) -> tuple[tuple[str, OptionValue], ...]:
    """Typed options of one quant token, checked and normalised (flags left off when false)."""
    out: dict[str, OptionValue] = {}
    for key, value in opts.items():
        key = str(key)
        odef = backend.options.get(key)
        if odef is None or key == "skip":
            if not backend.options:
                raise DiffquantError(f"{token!r} takes no options (got {key!r}).", hint=f"write just {token}")
            raise unknown_choice(f"option for {token!r}", key, [k for k in backend.options if k != "skip"],
                                 hint="options go in parentheses: token(key=value,flag); "
                                      "modules kept unquantized go in skip=NAME|NAME (skip_modules in TOML)")
        if odef.types and qtype not in odef.types:
            raise DiffquantError(f"{key} only applies to {odef.applies_to}; {token!r} does not use it, so it "
                                 "would only change the recipe's hash.", hint=f"drop {key} from {token}")
        _check_kind(token, key, value, odef)
        check_value(token, key, value, odef)
        if key == "keep":
            value = normalize_keep(token, str(value))
        if (value is not False or odef.false_kept) and value != odef.default:  # one spelling per meaning
            out[key] = value
    for key, odef in backend.options.items():  # e.g. gguf's path= leaves nothing for keep= to do
        given = [other for other in odef.excludes if key in out and other in out]
        if given:
            what = " and ".join(f"{o!r} {backend.options[o].noun}".rstrip() for o in given)
            raise DiffquantError(f"{backend.name} {what} {odef.excludes_why}",
                                 hint=f"drop {given[0]}= or {key}=")
    return tuple(sorted(out.items()))


def _check_kind(token: str, key: str, value: object, odef: cat.OptionDef) -> None:
    ok = (isinstance(value, bool) if odef.kind is bool else
          isinstance(value, int) and not isinstance(value, bool) if odef.kind is int else isinstance(value, str))
    if not ok:
        raise DiffquantError(f"Option {key!r} of {token!r} must be a {odef.kind.__name__}; got {describe(value)}.",
                             hint=f"see `diffquant recipes` for {token}'s options")


# --- whole recipes -------------------------------------------------------------------------------

def check_quant_spec(spec: QuantSpec) -> None:
    backend = cat.BACKENDS.get(spec.backend) if isinstance(spec.backend, str) else None
    if backend is None:
        raise unknown_choice("backend", str(spec.backend), cat.BACKENDS)
    if spec.qtype not in backend.types:
        raise unknown_choice(f"{backend.title} type", str(spec.qtype), backend.types)
    token = quant_token(spec)
    if not isinstance(spec.target, str) or not (spec.target == DEFAULT_TARGET or NAME.fullmatch(spec.target)):
        raise DiffquantError(f"{token}: component name {spec.target!r} is not valid.",
                             hint=f"use letters, digits and _, e.g. {token}@transformer")
    if quant_options(token, backend, spec.qtype, dict(spec.options)) != tuple(spec.options):
        raise DiffquantError(f"{token}: options must be sorted (key, value) pairs with no false flags.",
                             hint="build recipes with parse_recipe or Recipe.from_dict")
    if spec.skip_modules:
        if "skip" not in backend.options:
            raise DiffquantError(f"{token} cannot skip modules.", hint=f"drop skip from {token}")
        if skip_patterns(token, "|".join(map(str, spec.skip_modules))) != spec.skip_modules:
            raise DiffquantError(f"{token}: bad skip_modules {spec.skip_modules!r}.", hint="give names as strings")


def check_recipe(recipe: RecipeFields) -> None:
    """Every field and cross-field rule, for any way the recipe was built."""
    targets = [q.target for q in recipe.quant]
    dupes = sorted({t for t in targets if targets.count(t) > 1})
    if dupes:
        raise DiffquantError(f"Component(s) {', '.join(dupes)} quantized twice in one recipe.",
                             hint="give each component one quantization (use @component to pick)")
    if recipe.dtype not in cat.DTYPES.values():
        raise unknown_choice("dtype", str(recipe.dtype), cat.DTYPES.values())
    for spec in recipe.quant:
        check_quant_spec(spec)
    _check_memory(recipe.memory)
    _check_compile(recipe.compile, recipe.memory)


def _check_memory(mem: MemorySpec) -> None:
    modes = ("none", *dict.fromkeys(cat.OFFLOAD_TOKENS.values()))
    if mem.offload not in modes:
        raise unknown_choice("offload mode", str(mem.offload), modes)
    for name in ("use_stream", "offload_to_disk", "vae_tiling", "vae_slicing"):
        if not isinstance(getattr(mem, name), bool):
            raise field_error(f"memory.{name}", getattr(mem, name), "true or false", f"{name} = true")
    if (mem.use_stream or mem.offload_to_disk) and not mem.offload.startswith("group"):
        raise DiffquantError("stream/disk options need group offload.",
                             hint="use offload-group-leaf(stream) or offload-group-block(disk)")
    blocks = mem.blocks_per_group
    if isinstance(blocks, bool) or not isinstance(blocks, int):
        raise field_error("memory.blocks_per_group", blocks, "a whole number", "blocks_per_group = 2")
    if not 1 <= blocks <= 1024:
        raise DiffquantError(f"offload-group-block needs blocks >= 1 (and at most 1024); got {blocks}.",
                             hint="e.g. offload-group-block(blocks=2)")
    if blocks != 1 and mem.offload != "group-block":
        raise DiffquantError(f"blocks_per_group = {blocks} only applies to offload-group-block "
                             f"(offload is {mem.offload!r}).",
                             hint='set offload = "group-block", or drop blocks_per_group')


def _check_compile(spec: CompileSpec, mem: MemorySpec) -> None:
    if not isinstance(spec.enabled, bool) or not isinstance(spec.fullgraph, bool):
        raise field_error("compile.enabled/fullgraph", spec.enabled if not isinstance(spec.enabled, bool)
                          else spec.fullgraph, "true or false", "enabled = true")
    if spec.mode not in cat.COMPILE_MODES:
        raise unknown_choice("compile mode", str(spec.mode), cat.COMPILE_MODES, hint="e.g. compile(mode=max-autotune)")
    if not isinstance(spec.components, tuple) or not spec.components \
            or compile_components("|".join(map(str, spec.components))) != spec.components:
        raise DiffquantError(f"Bad compile components {spec.components!r}.",
                             hint="e.g. compile(components=denoiser|vae)")
    if not spec.enabled and (spec.fullgraph or spec.mode != "default"
                             or spec.components != cat.DEFAULT_COMPILE_COMPONENTS):
        raise DiffquantError("compile options are set but compile is not enabled.",
                             hint="set enabled = true under [compile], or drop mode/fullgraph/components")
    if spec.enabled and mem.offload == "sequential":
        raise DiffquantError("compile and offload-seq contradict: sequential offload moves every weight "
                             "per call through hooks that torch.compile cannot trace.",
                             hint="use offload-model or offload-group-leaf with compile")
