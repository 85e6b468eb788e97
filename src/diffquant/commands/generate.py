"""``diffquant generate``: one image from a model with a recipe applied."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("generate", help="generate one image with a recipe applied",
                                   description="Load MODEL with RECIPE and write one PNG (prompt, seed and "
                                               "recipe recorded in its metadata).")
    parser.add_argument("model", help="Hub id, local pipeline folder, or zoo:NAME")
    parser.add_argument("--recipe", default="bf16", help="recipe string or .toml file (default: bf16)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("-o", "--output", type=Path, default=Path("out.png"), help="PNG path (default: out.png)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.set_defaults(func=run)
    return parser


def parse_size(text: str | None) -> tuple[int | None, int | None]:
    """'WIDTHxHEIGHT' -> (height, width)."""
    from diffquant.errors import DiffquantError

    if not text:
        return None, None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise DiffquantError(f"Cannot read size {text!r}.", hint="write WIDTHxHEIGHT, e.g. 1024x1024") from None
    return height, width


def run(args: argparse.Namespace) -> int:
    import time

    from diffquant.images import save_png
    from diffquant.pipeline import generate, load_info, load_pipeline

    height, width = parse_size(args.size)
    started = time.perf_counter()
    pipe = load_pipeline(args.model, args.recipe, device=args.device)
    info = load_info(pipe)
    out = generate(pipe, args.prompt, seed=args.seed, steps=args.steps, height=height, width=width,
                   guidance_scale=args.guidance)
    save_png(out.image, args.output, {"prompt": args.prompt, "seed": str(args.seed), "recipe": info.recipe.name,
                                      "model": args.model})
    print(f"wrote {args.output} ({out.image.width}x{out.image.height}, recipe {info.recipe.name}, "
          f"{time.perf_counter() - started:.1f} s including load)")
    for note in info.notes:
        print(f"note: {note}")
    return 0
