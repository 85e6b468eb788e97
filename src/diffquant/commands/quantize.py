"""``diffquant quantize``: quantize a pipeline with a recipe and save it; loads back with
``diffquant.load_pipeline(folder)`` (and, for library-serialisable backends, plain diffusers)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from diffquant.arguments import argtype, parse_device


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("quantize", help="quantize a pipeline and save it to a folder",
                                   description="Load MODEL with RECIPE and save the quantized pipeline to "
                                               "OUTPUT (written to a temporary folder and renamed: a failure "
                                               "leaves nothing behind).")
    parser.add_argument("model", help="Hub id, local pipeline folder, or zoo:NAME")
    parser.add_argument("--recipe", required=True, help="recipe string or .toml file (quantization part is saved)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="new folder to write")
    parser.add_argument("--device", type=argtype(parse_device), default=None,
                        help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from diffquant.errors import DiffquantError
    from diffquant.inspect import component_stats, disk_bytes
    from diffquant.pipeline import load_info, load_pipeline
    from diffquant.recipes import load_recipe
    from diffquant.serialize import save_quantized

    recipe = load_recipe(args.recipe)
    if not recipe.quant:
        raise DiffquantError(f"Recipe {recipe.name!r} quantizes nothing.",
                             hint="give a quantization recipe, e.g. --recipe bnb-nf4")
    if args.output.exists() and any(args.output.iterdir()):
        raise DiffquantError(f"Output folder {str(args.output)!r} exists and is not empty.",
                             hint="choose a new folder, or delete this one first")
    pipe = load_pipeline(args.model, recipe, device=args.device)
    out = save_quantized(pipe, args.output)
    info = load_info(pipe)
    for name, stats in component_stats(pipe).items():
        if name in info.quantized:
            print(f"{name}: {info.quantized[name]}, {stats.weight_bytes / 2**20:.1f} MiB held "
                  f"({stats.bits_per_weight:.2f} bits/weight)")
    print(f"wrote {out} ({disk_bytes(out) / 2**20:.1f} MiB on disk); load it with "
          f"diffquant.load_pipeline({str(out)!r})")
    return 0
