"""Recipe strings: ``token(opts)@target + token + ...`` ⇄ ``Recipe``.

Examples: ``bf16``, ``bnb-nf4``, ``torchao-int8wo+offload-group-leaf``,
``bnb-nf4(double_quant)@transformer+quanto-int8@text_encoder_2``,
``gguf-q4_k(keep=norm|*.mod*=Q8_0)+compile(mode=max-autotune,fullgraph)``.
"""

from __future__ import annotations

import re
from dataclasses import replace

from diffquant.errors import DiffquantError, unknown_choice
from diffquant.recipes import catalog as cat
from diffquant.recipes.model import Recipe, format_recipe
from diffquant.recipes.specs import (
    DEFAULT_TARGET,
    CompileSpec,
    MemorySpec,
    OptionValue,
    QuantSpec,
    quant_token,
)
from diffquant.recipes.validate import (
    check_recipe,
    check_value,
    compile_components,
    option_from_text,
    quant_options,
    skip_patterns,
)

__all__ = ["format_recipe", "parse_recipe"]

_TOKEN = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)(?:\((?P<opts>[^()]*)\))?(?:@(?P<target>[A-Za-z0-9_]+))?$")
_HINT = "run `diffquant recipes` to see every recipe token and its options"

RawOptions = dict[str, "str | None"]  # key -> text after '=', None for a bare flag


def _split_top_level(text: str) -> list[str]:
    """Split on '+' outside parentheses."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "+" and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def _parse_options(raw: str | None, token: str) -> RawOptions:
    options: RawOptions = {}
    if not raw:
        return options
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if key in options:
            raise DiffquantError(f"Option {key!r} given twice in {token!r}.", hint="give each option once")
        options[key] = value.strip() if sep else None
    return options


def _typed(name: str, opts: RawOptions, allowed: dict[str, cat.OptionDef], *,
           check: bool = True) -> dict[str, OptionValue]:
    """Raw option text -> typed values by each option's declared kind (never by guessing)."""
    typed: dict[str, OptionValue] = {}
    for key, raw in opts.items():
        odef = allowed.get(key)
        if odef is None:
            if not allowed:
                raise DiffquantError(f"{name!r} takes no options (got {key!r}).", hint=f"write just {name}")
            raise unknown_choice(f"option for {name!r}", key, allowed,
                                 hint="options go in parentheses: token(key=value,flag)")
        typed[key] = option_from_text(name, key, raw, odef)
        if check:  # quant options are checked by quant_options, once it knows the type uses them
            check_value(name, key, typed[key], odef)
    return typed


def parse_recipe(text: str) -> Recipe:
    """Parse a recipe string; raises DiffquantError with choices and suggestions on bad input."""
    if not isinstance(text, str) or not text.strip():
        raise DiffquantError("Empty recipe.", hint=f"give e.g. 'bf16' or 'bnb-nf4'; {_HINT}")
    quant: list[QuantSpec] = []
    memory = MemorySpec()
    compile_spec = CompileSpec()
    dtype: str | None = None
    seen_offload: str | None = None
    seen: set[str] = set()
    for token in _split_top_level(text.strip()):
        match = _TOKEN.match(token)
        if not token or not match:
            raise DiffquantError(f"Cannot read recipe token {token!r} in {text!r}.",
                                 hint="tokens look like name, name(key=value,flag) or name@component, "
                                      f"joined with '+'; {_HINT}")
        name = match["name"].lower()
        opts = _parse_options(match["opts"], token)
        target = match["target"]
        if target and not _is_quant_name(name):
            raise DiffquantError(f"'@{target}' only applies to quantization tokens, not {name!r}.",
                                 hint="write e.g. bnb-nf4@transformer")
        if name in seen and not _is_quant_name(name) and name not in cat.DTYPES:
            raise DiffquantError(f"{name!r} is given twice in {text!r}; a recipe says each thing once.",
                                 hint=f"keep one {name} token (with all its options)")
        seen.add(name)
        if name in cat.DTYPES:
            _typed(name, opts, {})
            if dtype is not None:
                raise DiffquantError(f"Two dtypes in {text!r}.", hint="give one of bf16, fp16, fp32")
            dtype = cat.DTYPES[name]
        elif name in cat.OFFLOAD_TOKENS:
            if seen_offload:
                raise DiffquantError(f"Contradictory offload options {seen_offload!r} and {name!r}.",
                                     hint="choose one offload mode per recipe")
            seen_offload = name
            memory = _parse_offload(name, _typed(name, opts, cat.OFFLOAD_OPTIONS), memory)
        elif name in cat.VAE_TOKENS:
            _typed(name, opts, {})
            memory = replace(memory, **{cat.VAE_TOKENS[name]: True})
        elif name == cat.COMPILE_TOKEN:
            typed = _typed(name, opts, cat.COMPILE_OPTIONS)
            components = (compile_components(str(typed["components"])) if "components" in typed
                          else cat.DEFAULT_COMPILE_COMPONENTS)
            compile_spec = CompileSpec(enabled=True, mode=str(typed.get("mode", "default")),
                                       fullgraph=bool(typed.get("fullgraph", False)), components=components,
                                       regional=bool(typed.get("regional", False)))
        elif _is_quant_name(name):
            quant.append(_parse_quant(name, opts, target or DEFAULT_TARGET))
        else:
            raise unknown_choice("recipe token", name, cat.all_token_names(), hint=_HINT)
    recipe = Recipe(quant=tuple(sorted(quant, key=_quant_order)), memory=memory, compile=compile_spec,
                    dtype=dtype or "bfloat16")
    check_recipe(recipe)
    return recipe


def _quant_order(spec: QuantSpec) -> tuple[int, str]:
    return (0 if spec.target == DEFAULT_TARGET else 1, spec.target)


def _is_quant_name(name: str) -> bool:
    if cat.own_token(name):
        return True
    prefix = name.split("-", 1)[0]
    return prefix in cat.BACKENDS and not cat.BACKENDS[prefix].tokens


def _parse_quant(name: str, opts: RawOptions, target: str) -> QuantSpec:
    own = cat.own_token(name)
    if own:
        backend, qtype = own
    else:
        prefix, _, qtype = name.partition("-")
        backend = cat.BACKENDS[prefix]
        if qtype not in backend.types:
            raise unknown_choice(f"{backend.title} type", qtype, backend.types,
                                 hint=f"write {prefix}-<type>, e.g. {prefix}-{next(iter(backend.types))}")
    token = quant_token(QuantSpec(backend.name, qtype))
    typed = _typed(name, opts, backend.options, check=False)
    skip = typed.pop("skip", None)
    return QuantSpec(backend=backend.name, qtype=qtype, target=target,
                     options=quant_options(token, backend, qtype, typed),
                     skip_modules=skip_patterns(token, str(skip)) if skip else ())


def _parse_offload(name: str, opts: dict[str, OptionValue], memory: MemorySpec) -> MemorySpec:
    mode = cat.OFFLOAD_TOKENS[name]
    if not mode.startswith("group") and opts:
        raise DiffquantError(f"{name!r} takes no options; stream/disk/blocks belong to group offload.",
                             hint="use offload-group-leaf(stream) or offload-group-block(blocks=2)")
    if "blocks" in opts and mode != "group-block":
        raise DiffquantError("'blocks' only applies to offload-group-block.",
                             hint="use offload-group-block(blocks=N)")
    return replace(memory, offload=mode, blocks_per_group=int(opts.get("blocks", 1)),
                   use_stream=bool(opts.get("stream", False)), offload_to_disk=bool(opts.get("disk", False)))
