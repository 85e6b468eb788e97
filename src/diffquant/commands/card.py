"""``diffquant card``: (re)write the model card (README.md) of an existing export."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from diffquant.commands.quantize import add_card_arguments

    parser = subparsers.add_parser(
        "card", help="(re)write the model card of a quantized export",
        description="Write FOLDER/README.md, a Hugging Face model card: the recipe, versions, weight bytes per "
                    "component, how to load the folder with and without diffquant, and with --card-from the "
                    "measured table and sample images of this model and recipe from a results database.")
    parser.add_argument("folder", type=Path, help="a folder written by `diffquant quantize`")
    add_card_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from diffquant.export.card import validate_card, write_card

    path = write_card(args.folder, card_from=args.card_from, base_model=args.base_model)
    card = validate_card(path)
    measured = (card.data.to_dict().get("diffquant") or {}).get("measured")
    print(f"wrote {path}" + (f" with run {measured['run_id']} of {args.card_from}" if measured else ""))
    return 0
