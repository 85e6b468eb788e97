"""Property tests (Hypothesis) over the recipe string form, the TOML/dict form and the CLI's value
parsers: no input gives anything but a DiffquantError, and every accepted recipe round-trips
string ⇄ TOML ⇄ dict to an equal recipe with the same hash. 2000 inputs per test by default;
`pytest -m slow` runs 25 times as many. Pure Python, no torch."""

from __future__ import annotations

import math
import string
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffquant import arguments as args
from diffquant.errors import DiffquantError
from diffquant.recipes import Recipe, parse_recipe, recipe_from_toml, recipe_to_toml
from diffquant.recipes import catalog as cat

FAST = settings(max_examples=2000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
SLOW = settings(FAST, max_examples=50_000)

TARGETS = ("default", "transformer", "text_encoder", "text_encoder_2")
SAFE = string.ascii_letters + string.digits + "_./-"
NAME = st.text(string.ascii_letters + string.digits + "_", min_size=1, max_size=12)
PATTERN = st.text(string.ascii_letters + string.digits + "_.*?-", min_size=1, max_size=10)
NOISE = st.text(string.printable + "×éß€\u00a0\u2028()+,=@|", max_size=40)


# --- the string form ----------------------------------------------------------------------------

def _quant_token(backend: str, qtype: str) -> str:
    if backend == "layerwise":
        return "fp8-layerwise" if qtype == "e4m3" else f"fp8-layerwise-{qtype}"
    return f"{backend}-{qtype}"


@st.composite
def valid_quant(draw: st.DrawFn, target: str) -> str:
    backend = draw(st.sampled_from(sorted(cat.BACKENDS)))
    qtype = draw(st.sampled_from(sorted(cat.BACKENDS[backend].types)))
    opts: list[str] = []
    if backend == "bnb":
        if draw(st.booleans()):
            opts.append(f"compute_dtype={draw(st.sampled_from(['bfloat16', 'float16', 'float32']))}")
        if qtype != "int8" and draw(st.booleans()):
            opts.append(draw(st.sampled_from(["double_quant", "double_quant=true", "double_quant=no"])))
    if backend == "torchao" and qtype in ("int4wo", "intx4wo") and draw(st.booleans()):
        opts.append(f"group_size={draw(st.sampled_from([32, 64, 128, 256]))}")
    if backend == "gguf":
        if draw(st.booleans()):
            opts.append("path=" + draw(st.text(SAFE, min_size=1, max_size=20)))
        else:
            if draw(st.booleans()):
                keep = draw(st.lists(st.tuples(PATTERN, st.none() | st.sampled_from(cat.GGUF_KEEP_TYPES)),
                                     min_size=1, max_size=3, unique_by=lambda t: t[0]))
                opts.append("keep=" + "|".join(p + (f"={t.lower() if len(p) % 2 else t}" if t else "")
                                               for p, t in keep))
            if draw(st.booleans()):
                opts.append(f"layout={draw(st.sampled_from(['diffusers', 'bfl']))}")
    if "skip" in cat.BACKENDS[backend].options and draw(st.booleans()):
        opts.append("skip=" + "|".join(draw(st.lists(PATTERN, min_size=1, max_size=3, unique=True))))
    text = _quant_token(backend, qtype) + (f"({','.join(draw(st.permutations(opts)))})" if opts else "")
    return text if target == "default" else f"{text}@{target}"


@st.composite
def valid_recipe_text(draw: st.DrawFn) -> str:
    tokens: list[str] = []
    if draw(st.booleans()):
        tokens.append(draw(st.sampled_from(sorted(cat.DTYPES))))
    for target in draw(st.lists(st.sampled_from(TARGETS), max_size=3, unique=True)):
        tokens.append(draw(valid_quant(target)))
    offload = draw(st.none() | st.sampled_from(sorted(cat.OFFLOAD_TOKENS)))
    compiled = draw(st.booleans()) and offload not in ("offload-seq", "offload-sequential")
    if offload:
        opts = []
        if "group" in offload:
            opts = [o for o in ("stream", "disk") if draw(st.booleans())]
            if offload == "offload-group-block" and draw(st.booleans()):
                opts.append(f"blocks={draw(st.integers(1, 1024))}")
        tokens.append(offload + (f"({','.join(opts)})" if opts else ""))
    tokens += [t for t in cat.VAE_TOKENS if draw(st.booleans())]
    if compiled:
        opts = []
        if draw(st.booleans()):
            opts.append(f"mode={draw(st.sampled_from(cat.COMPILE_MODES))}")
        if draw(st.booleans()):
            opts.append("fullgraph")
        if draw(st.booleans()):
            opts.append("components=" + "|".join(draw(st.lists(NAME, min_size=1, max_size=3, unique=True))))
        tokens.append("compile" + (f"({','.join(opts)})" if opts else ""))
    if not tokens:
        tokens = ["bf16"]
    return "+".join(draw(st.permutations(tokens)))


def _junk_value() -> st.SearchStrategy[str]:
    return st.one_of(st.integers(-10**30, 10**30).map(str), st.sampled_from(
        ["true", "false", "yes", "no", "maybe", "", "0", "-1", "1e3", "Q8_0", "q9_9", "norm=Q8_0", "a|a", "bfl",
         "max-autotune", "float16", "proj_out|norm_out", "denoiser|vae", "+5", " 7 "]), NOISE)


@st.composite
def fuzzed_recipe_text(draw: st.DrawFn) -> str:
    """Mostly recipe-shaped text with wrong names, options, values and separators mixed in."""
    names = cat.all_token_names() + ["bnb", "torchao-int8", "gguf-q9_9", "compile", "fp8", "Bnb-NF4"]
    keys = sorted({k for b in cat.BACKENDS.values() for k in b.options} | set(cat.OFFLOAD_OPTIONS)
                  | set(cat.COMPILE_OPTIONS) | {"colour", ""})
    tokens = []
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.integers(0, 9)) == 0:
            tokens.append(draw(NOISE))
            continue
        name = draw(st.sampled_from(names))
        opts = [draw(st.sampled_from(keys)) + draw(st.sampled_from(["", "="])) + draw(_junk_value())
                for _ in range(draw(st.integers(0, 3)))]
        text = name + (f"({','.join(opts)})" if opts or draw(st.booleans()) else "")
        if draw(st.integers(0, 4)) == 0:
            text += "@" + draw(st.sampled_from([*TARGETS, "vae", "", "a b"]))
        tokens.append(text)
    return draw(st.sampled_from(["+", " + ", "++", ","])).join(tokens)


def assert_round_trips(recipe: Recipe) -> None:
    """string ⇄ TOML ⇄ dict give an equal recipe with the same hash and canonical name."""
    again = parse_recipe(recipe.name)
    assert again == recipe and again.hash == recipe.hash and again.name == recipe.name
    via_toml = recipe_from_toml(recipe_to_toml(recipe))
    assert via_toml == recipe and via_toml.hash == recipe.hash
    via_dict = Recipe.from_dict(recipe.to_dict())
    assert via_dict == recipe and via_dict.hash == recipe.hash


def check_string(text: str, must_parse: bool = False) -> None:
    try:
        recipe = parse_recipe(text)
    except DiffquantError as exc:
        assert not must_parse, f"{text!r} refused: {exc}"
        assert str(exc).strip()
        return
    assert_round_trips(recipe)


@FAST
@given(valid_recipe_text())
def test_valid_strings_parse_and_round_trip(text: str) -> None:
    check_string(text, must_parse=True)


@FAST
@given(fuzzed_recipe_text())
def test_fuzzed_strings_error_or_round_trip(text: str) -> None:
    check_string(text)


@FAST
@given(st.text(max_size=60) | st.text("bnfqtgu48_-()+,=@|.lkpsx", max_size=40))
def test_raw_text_never_tracebacks(text: str) -> None:
    check_string(text)


# --- the TOML / dict form ---------------------------------------------------------------------------

SCALAR = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False), NOISE,
                   st.sampled_from(["false", "no", "2", "proj_out", "bfloat16", "group-block", "max-autotune",
                                    "nf4", "bnb", "default", "norm=Q8_0"]))
ANY = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAME, inner, max_size=3),
                   max_leaves=6)


def _maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a valid value, sometimes anything."""
    return st.one_of(valid, valid, valid, ANY)


@st.composite
def quant_table(draw: st.DrawFn) -> dict[str, Any]:
    backend = draw(st.sampled_from(sorted(cat.BACKENDS)))
    table: dict[str, Any] = {"backend": draw(_maybe(st.just(backend))),
                             "type": draw(_maybe(st.sampled_from(sorted(cat.BACKENDS[backend].types))))}
    if draw(st.booleans()):
        table["target"] = draw(_maybe(st.sampled_from(TARGETS)))
    if draw(st.booleans()):
        keys = sorted(cat.BACKENDS[backend].options) + ["colour"]
        values = st.one_of(st.booleans(), st.sampled_from([32, 64, 0, -1, 100]), PATTERN,
                           st.sampled_from(["float16", "bfl", "norm|proj_out=Q8_0", "x.gguf"]))
        table["options"] = draw(_maybe(st.dictionaries(st.sampled_from(keys), values, max_size=3)))
    if draw(st.booleans()):
        table["skip_modules"] = draw(_maybe(st.lists(PATTERN, max_size=3)))
    if draw(st.integers(0, 9)) == 0:
        table[draw(NAME)] = draw(ANY)
    return table


@st.composite
def recipe_dict(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if draw(st.booleans()):
        data["schema_version"] = draw(_maybe(st.just(1)))
    if draw(st.booleans()):
        data["dtype"] = draw(_maybe(st.sampled_from(sorted(cat.DTYPES.values()))))
    if draw(st.booleans()):
        data["quant"] = draw(_maybe(st.lists(quant_table(), max_size=3)))
    if draw(st.booleans()):
        memory = {"offload": st.sampled_from(["none", "model", "sequential", "group-leaf", "group-block"]),
                  "blocks_per_group": st.integers(-2, 2000), "use_stream": st.booleans(),
                  "offload_to_disk": st.booleans(), "vae_tiling": st.booleans(), "vae_slicing": st.booleans()}
        data["memory"] = draw(_maybe(st.fixed_dictionaries({}, optional={k: _maybe(v) for k, v in memory.items()})))
    if draw(st.booleans()):
        comp = {"enabled": st.booleans(), "mode": st.sampled_from(cat.COMPILE_MODES), "fullgraph": st.booleans(),
                "components": st.lists(NAME, min_size=1, max_size=2)}
        data["compile"] = draw(_maybe(st.fixed_dictionaries({}, optional={k: _maybe(v) for k, v in comp.items()})))
    if draw(st.integers(0, 9)) == 0:
        data[draw(NAME)] = draw(ANY)
    return data


def check_dict(data: Any) -> None:
    try:
        recipe = Recipe.from_dict(data)
    except DiffquantError as exc:
        assert str(exc).strip()
        return
    assert_round_trips(recipe)


@FAST
@given(recipe_dict())
def test_toml_form_errors_or_round_trips(data: dict[str, Any]) -> None:
    try:
        text = tomli_w.dumps(data)
    except (TypeError, ValueError):  # not expressible in TOML (e.g. a float key): the dict form still is
        text = None
    if text is not None:
        try:
            recipe = recipe_from_toml(text)
        except DiffquantError:
            recipe = None
        if recipe is not None:
            assert_round_trips(recipe)
            assert recipe == Recipe.from_dict(data)  # the TOML text and its dict agree
    check_dict(data)


@FAST
@given(st.text(max_size=80) | st.text("[]=\"'{},.\n quantmemorycompile_12", max_size=80))
def test_raw_toml_text_never_tracebacks(text: str) -> None:
    try:
        recipe = recipe_from_toml(text)
    except DiffquantError:
        return
    assert_round_trips(recipe)


@FAST
@given(st.one_of(ANY, st.none(), st.tuples(NAME), st.just({"quant": [None]}), st.just({"memory": None}),
                 st.dictionaries(st.integers() | st.none(), ANY, max_size=2),
                 st.dictionaries(st.integers() | NAME, SCALAR, max_size=2).map(
                     lambda o: {"quant": [{"backend": "bnb", "type": "nf4", "options": o}]})))
def test_any_object_as_dict_never_tracebacks(data: Any) -> None:
    check_dict(data)


# --- the command line's values ----------------------------------------------------------------------

PARSERS = {"size": args.parse_size, "steps": args.parse_steps, "seeds": args.parse_seeds, "seed": args.parse_seed,
           "device": args.parse_device, "budget": args.parse_budget, "guidance": args.parse_guidance,
           "timeout": args.parse_timeout, "count": args.parse_count}
NUMBERISH = st.one_of(
    NOISE, st.integers(-10**25, 10**25).map(str), st.floats().map(str),
    st.tuples(st.integers(-5, 20000), st.sampled_from(["x", "X", "×", "*", " x ", "-"]), st.integers(-5, 20000))
    .map(lambda t: f"{t[0]}{t[1]}{t[2]}"),
    st.tuples(st.floats(0, 1e4), st.sampled_from(["", " ", "b", "kb", "MB", "MiB", "g", "GB", "GiB", "gb", "tb",
                                                   "sixteen", "GBs"])).map(lambda t: f"{t[0]:g}{t[1]}"),
    st.lists(st.integers(-3, 2**64), max_size=4).map(lambda xs: ",".join(map(str, xs))),
    st.sampled_from(["cpu", "CUDA", "cuda:1", "cuda:", "mps", "gpu", "16GB", "16 GiB", "1.5e10", "inf", "nan"]))


def check_cli_value(kind: str, text: str) -> None:
    try:
        value = PARSERS[kind](text)
    except DiffquantError as exc:
        assert "e.g." in str(exc) or "Valid choices" in str(exc), str(exc)  # every refusal shows the way
        return
    if kind == "size":
        width, height = value
        assert 1 <= width <= args.MAX_SIDE and 1 <= height <= args.MAX_SIDE
        assert args.parse_size(f"{width}x{height}") == value
    elif kind in ("steps", "count"):
        assert PARSERS[kind](str(value)) == value
    elif kind == "seeds":
        assert args.parse_seeds(",".join(map(str, value))) == value and len(set(value)) == len(value)
    elif kind == "budget":
        assert 1 <= value <= 2**60 and args.parse_budget(str(value)) == value
    elif kind in ("guidance", "timeout"):
        assert math.isfinite(value) and value >= 0
    elif kind == "device":
        assert args.parse_device(value) == value


@FAST
@given(st.sampled_from(sorted(PARSERS)), NUMBERISH)
def test_cli_values_error_or_parse_consistently(kind: str, text: str) -> None:
    check_cli_value(kind, text)


# --- the same properties, longer, under -m slow --------------------------------------------------

@pytest.mark.slow
@SLOW
@given(valid_recipe_text() | fuzzed_recipe_text() | st.text(max_size=60))
def test_strings_slow(text: str) -> None:
    check_string(text)


@pytest.mark.slow
@SLOW
@given(recipe_dict())
def test_dicts_slow(data: dict[str, Any]) -> None:
    check_dict(data)


@pytest.mark.slow
@SLOW
@given(st.sampled_from(sorted(PARSERS)), NUMBERISH)
def test_cli_values_slow(kind: str, text: str) -> None:
    check_cli_value(kind, text)
