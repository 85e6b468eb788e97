"""``diffquant generate``: one image from a model with a recipe applied."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from diffquant.arguments import (
    argtype,
    parse_device,
    parse_guidance,
    parse_seed,
    parse_steps,
    parse_width_height,
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("generate", help="generate one image with a recipe applied",
                                   description="Load MODEL with RECIPE and write one PNG (prompt, seed and "
                                               "recipe recorded in its metadata).")
    parser.add_argument("model", help="Hub id, local pipeline folder, or zoo:NAME")
    parser.add_argument("--recipe", default="bf16", help="recipe string or .toml file (default: bf16)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("-o", "--output", type=Path, default=Path("out.png"), help="PNG path (default: out.png)")
    parser.add_argument("--seed", type=argtype(parse_seed), default=0, help="seed (default: 0)")
    parser.add_argument("--steps", type=argtype(parse_steps), default=None,
                        help="denoising steps (default: the model's)")
    parser.add_argument("--size", type=argtype(parse_width_height), default=None,
                        help="WIDTHxHEIGHT, or one number for a square (default: the model's)")
    parser.add_argument("--guidance", type=argtype(parse_guidance), default=None)
    parser.add_argument("--device", type=argtype(parse_device), default=None,
                        help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import time

    from diffquant.arguments import check_size_for_model
    from diffquant.components import resolve_model
    from diffquant.images import save_png
    from diffquant.pipeline import generate, load_info, load_pipeline
    from diffquant.recipes import load_recipe

    recipe = load_recipe(args.recipe)  # a bad recipe or size is refused before anything loads
    width, height = args.size or (None, None)
    check_size_for_model(resolve_model(args.model), width, height)
    started = time.perf_counter()
    pipe = load_pipeline(args.model, recipe, device=args.device)
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
