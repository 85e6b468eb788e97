"""One parser per kind of command-line value, shared by every command (and by the Python API).

Each ``parse_*`` takes the text as typed and returns the value, or raises ``DiffquantError`` with
what was given, the valid range and an example. ``argtype(parse_x)`` adapts one for argparse's
``type=``; ``check_size_for_model`` applies the limits of a model (FLUX/SD3 sizes are multiples
of 16: the VAE's scale factor times the transformer's patch or 2×2 packing), before any worker
starts. No heavy imports here.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from diffquant.errors import DiffquantError

T = TypeVar("T")

MAX_SIDE = 16384  # pixels: far beyond any model here, small enough to catch a slip of the keyboard
MAX_STEPS = 1000
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit value
DEVICES = ("cpu", "cuda", "cuda:N")

# Binary units: a GPU sold as "16 GB" holds 16 GiB, and the seed article's "GB" are GiB, so GB and
# GiB mean the same here (2**30 bytes). A bare number is bytes.
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30, "t": 2**40, "tb": 2**40, "tib": 2**40}
_BUDGET = re.compile(r"([0-9]+(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?|\.[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)")
_INT = re.compile(r"[+-]?[0-9]{1,19}")


def _int(text: str, what: str, example: str) -> int:
    cleaned = text.strip() if isinstance(text, str) else ""
    if not _INT.fullmatch(cleaned):
        raise DiffquantError(f"Cannot read {what} {text!r}: not a whole number.", hint=f"write e.g. {example}")
    return int(cleaned)


def parse_width_height(text: str) -> tuple[int, int]:
    """'1024x768' -> (width, height) = (1024, 768); '512' -> (512, 512). The one size parser: the
    text and the tuple are both WIDTH first (diffusers' call takes them by name: height=, width=)."""
    example = "--size 1024x1024 (WIDTHxHEIGHT) or --size 512 for a square"
    parts = re.split(r"[x×*]", text.strip().lower()) if isinstance(text, str) else []
    if len(parts) not in (1, 2):
        raise DiffquantError(f"Cannot read image size {text!r}.", hint=f"write e.g. {example}")
    values = [_int(p, "image size", example) for p in parts]
    width, height = values if len(values) == 2 else values * 2
    for label, value in (("width", width), ("height", height)):
        if not 1 <= value <= MAX_SIDE:
            raise DiffquantError(f"Image {label} {value} in {text!r} is out of range (1 to {MAX_SIDE} pixels).",
                                 hint=f"write e.g. {example}")
    return width, height


parse_size = parse_width_height  # the earlier name; same order (width, height)


def parse_steps(text: str) -> int:
    steps = _int(text, "steps", "--steps 28")
    if not 1 <= steps <= MAX_STEPS:
        raise DiffquantError(f"--steps must be between 1 and {MAX_STEPS}; got {steps}.",
                             hint="write e.g. --steps 28 (zero steps would denoise nothing)")
    return steps


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; each seed once, 0 to 2**63-1."""
    items = [s for s in text.split(",")] if isinstance(text, str) else [""]
    seeds = [_int(s, "seed", "--seeds 0,1,2") for s in items if s.strip()]
    if not seeds:
        raise DiffquantError(f"No seeds in {text!r}.", hint="write e.g. --seeds 0,1,2")
    for seed in seeds:
        if not 0 <= seed <= MAX_SEED:
            raise DiffquantError(f"Seed {seed} is out of range (0 to {MAX_SEED}).", hint="write e.g. --seeds 0,1,2")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise DiffquantError(f"Seed(s) {', '.join(map(str, twice))} given twice in {text!r}.",
                             hint="give each seed once, e.g. --seeds 0,1,2")
    return seeds


def parse_seed(text: str) -> int:
    seeds = parse_seeds(text)
    if len(seeds) != 1:
        raise DiffquantError(f"Give one seed, not {text!r}.", hint="write e.g. --seed 0")
    return seeds[0]


def parse_device(text: str) -> str:
    """'cpu', 'cuda' or 'cuda:N' (lower-cased)."""
    device = text.strip().lower() if isinstance(text, str) else ""
    if device in ("cpu", "cuda") or re.fullmatch(r"cuda:[0-9]{1,3}", device):
        return device
    raise DiffquantError(f"Unknown device {text!r}.", choices=DEVICES, given=device,
                         hint="write e.g. --device cpu or --device cuda:0")


def parse_budget(text: str) -> int:
    """A memory budget in bytes: '16GB', '16 GiB', '16gb', '512MiB', '1.5e10' (bytes).

    GB, G and GiB all mean 2**30 bytes (GPU memory is sold and quoted in binary units)."""
    example = "--budget 16GB (or 16GiB, 512MB, 1.5e10 bytes)"
    match = _BUDGET.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if not match or match[2] not in _UNITS:
        unit = match[2] if match else None
        raise DiffquantError(f"Cannot read memory budget {text!r}" + (f": unknown unit {unit!r}." if unit else "."),
                             hint=f"write a number with a unit, e.g. {example}")
    value = float(match[1]) * _UNITS[match[2]]
    if not math.isfinite(value) or value < 1 or value > 2**60:
        raise DiffquantError(f"Memory budget {text!r} is out of range (1 byte to 1 EiB).",
                             hint=f"write e.g. {example}")
    return int(value)


def parse_positive_float(text: str, what: str = "value", example: str = "1.5") -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise DiffquantError(f"Cannot read {what} {text!r}: not a number.", hint=f"write e.g. {example}") from None
    if not math.isfinite(value) or value <= 0:
        raise DiffquantError(f"{what} must be a positive number; got {text!r}.", hint=f"write e.g. {example}")
    return value


def parse_guidance(text: str) -> float:
    """Guidance scale: a finite number >= 0."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise DiffquantError(f"Cannot read guidance scale {text!r}: not a number.",
                             hint="write e.g. --guidance 3.5") from None
    if not math.isfinite(value) or value < 0:
        raise DiffquantError(f"--guidance must be a number >= 0; got {text!r}.", hint="write e.g. --guidance 3.5")
    return value


def parse_timeout(text: str) -> float:
    return parse_positive_float(text, "--timeout (seconds)", "--timeout 600")


def parse_count(text: str) -> int:
    """A count that may be zero (repeats, warm-up calls)."""
    value = _int(text, "count", "2")
    if not 0 <= value <= 10_000:
        raise DiffquantError(f"Count {value} is out of range (0 to 10000).", hint="write e.g. 2")
    return value


MAX_PROCESSES = 100


def parse_processes(text: str) -> int:
    """Fresh worker processes per recipe (bench --processes): 1 to MAX_PROCESSES."""
    value = _int(text, "processes", "--processes 3")
    if not 1 <= value <= MAX_PROCESSES:
        raise DiffquantError(f"--processes must be between 1 and {MAX_PROCESSES}; got {value}.",
                             hint="write e.g. --processes 3 (each recipe is measured in that many fresh workers)")
    return value


def argtype(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` for argparse's ``type=``: a DiffquantError becomes argparse's own usage error."""
    def convert(text: str) -> T:
        try:
            return parse(text)
        except DiffquantError as exc:
            raise argparse.ArgumentTypeError(str(exc).replace("\n", " ")) from None

    convert.__name__ = parse.__name__.removeprefix("parse_")
    return convert


# --- limits per model ----------------------------------------------------------------------------

def size_multiple(model_dir: Path) -> int | None:
    """What image sides must be a multiple of for this pipeline folder: the VAE's scale factor times
    the transformer's patch size (at least 2: FLUX packs 2×2 latents). None if the folder has no VAE."""
    def config(name: str) -> dict[str, object]:
        path = Path(model_dir) / name / "config.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    vae = config("vae")
    channels = vae.get("block_out_channels")
    if not isinstance(channels, list) or not channels:
        return None
    patch = config("transformer").get("patch_size", 1)
    patch = patch if isinstance(patch, int) and patch > 0 else 1
    return 2 ** (len(channels) - 1) * max(2, patch)


def check_size_for_model(model_dir: Path, width: int | None, height: int | None) -> None:
    """Refuse a size this pipeline cannot draw, before loading anything."""
    multiple = size_multiple(model_dir)
    if multiple is None:
        return
    for label, value in (("width", width), ("height", height)):
        if value is not None and value % multiple:
            near = max(multiple, round(value / multiple) * multiple)
            raise DiffquantError(
                f"Image {label} {value} is not a multiple of {multiple} for this model (its VAE's scale factor "
                f"times its patch size).", hint=f"use e.g. --size {near if label == 'width' else width}x"
                                                f"{near if label == 'height' else height}")
