"""``diffquant quantize``: quantize a pipeline with a recipe and save it with a model card; loads
back with ``diffquant.load_pipeline(folder)`` and, where the libraries can, without diffquant (the
card's README.md gives the lines)."""

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
    add_card_arguments(parser)
    parser.add_argument("--allow-pickle", action="store_true",
                        help="let a backend with no safe format for these library versions write a pickle "
                             "(named in the card; loaders refuse it unless told to trust it)")
    parser.set_defaults(func=run)
    return parser


def add_card_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--card-from", type=Path, default=None, metavar="F.db",
                        help="results database whose runs of this model and recipe fill the model card's "
                             "measured table and sample images")
    parser.add_argument("--base-model", default=None, metavar="ORG/NAME",
                        help="Hub id the card names as base_model (default: the model, if a Hub id)")


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
    if args.card_from is not None:  # fail before the (long) quantization, not after
        from diffquant.export.measured import find_measured

        find_measured(args.card_from, args.model, recipe.to_dict(), recipe.hash)
    pipe = load_pipeline(args.model, recipe, device=args.device)
    out = save_quantized(pipe, args.output, allow_pickle=args.allow_pickle, card_from=args.card_from,
                         base_model=args.base_model)
    info = load_info(pipe)
    for name, stats in component_stats(pipe).items():
        if name in info.quantized:
            print(f"{name}: {info.quantized[name]}, {stats.weight_bytes / 2**20:.1f} MiB held "
                  f"({stats.bits_per_weight:.2f} bits/weight)")
    print(f"wrote {out} ({disk_bytes(out) / 2**20:.1f} MiB on disk) with its model card {out / 'README.md'}; "
          f"load it with diffquant.load_pipeline({str(out)!r}) or the card's plain diffusers lines")
    return 0
