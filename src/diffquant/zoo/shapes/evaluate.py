"""Adherence of the ``shapes`` model, its random-weight twin, and the model under recipes.

    python -m diffquant.zoo.shapes.evaluate --recipes bf16,torchao-int8wo,bnb-nf4,gguf-q4_0,gguf-q2_k \\
        --json out/shapes-eval.json --images docs/images/shapes

Every variant generates the same prompts with the same seeded CPU generators at the model's
default settings; the scorer (float32) reads the attributes back. "fp32" is the shipped weights
computed in float32 (plain ``FluxPipeline.from_pretrained``); a recipe goes through
``diffquant.load_pipeline("zoo:shapes", recipe)``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffquant.atomic import write_text_atomic
from diffquant.zoo.shapes.scorer import (
    EVAL_PROMPTS_HELDOUT,
    EVAL_PROMPTS_SEEN,
    attribute_accuracy,
    generate,
    score_images,
)

GRID_PROMPTS = EVAL_PROMPTS_SEEN[:8]


def load_variant(variant: str) -> Any:
    """"fp32" / "random" (plain from_pretrained, float32) or a recipe string (diffquant.load_pipeline)."""
    if variant in ("fp32", "random"):
        from diffusers import FluxPipeline

        from diffquant import zoo

        pipe = FluxPipeline.from_pretrained(zoo.ensure_model("shapes" if variant == "fp32" else "shapes-random"))
        pipe.set_progress_bar_config(disable=True)
        return pipe
    from diffquant import load_pipeline

    return load_pipeline("zoo:shapes", variant, device="cpu")


def evaluate_variant(variant: str, seeds: Sequence[int] = (0, 1), steps: int | None = None
                     ) -> tuple[dict[str, Any], list[Any]]:
    """({"seen", "heldout", "seconds_per_image"}, the grid images) for one variant."""
    started = time.perf_counter()
    pipe = load_variant(variant)
    load_s = time.perf_counter() - started
    result: dict[str, Any] = {"variant": variant, "load_seconds": round(load_s, 2)}
    count, gen_s = 0, 0.0
    for name, prompts in (("seen", EVAL_PROMPTS_SEEN), ("heldout", EVAL_PROMPTS_HELDOUT)):
        t = time.perf_counter()
        images, used = generate(pipe, prompts, seeds, steps)
        gen_s += time.perf_counter() - t
        count += len(images)
        scores = score_images(images, used)
        result[name] = round(float(np.mean(scores)), 4)
        result[f"{name}_all_correct"] = round(float(np.mean([s == 1.0 for s in scores])), 4)
        result[f"{name}_by_attribute"] = attribute_accuracy(images, used)
    result["seconds_per_image_batched"] = round(gen_s / count, 3)
    grid, _ = generate(pipe, GRID_PROMPTS, seeds=(0,), steps=steps)
    return result, grid


def provenance() -> dict[str, Any]:
    """What the figures are of: the code's commit, and the sha256 of every shipped weight file (the
    scorer's too), the same map the training run's report lists."""
    from diffquant.bench.env import git_commit
    from diffquant.zoo.shapes.model import WEIGHTS_DIR
    from diffquant.zoo.shapes.train import written_files

    commit = git_commit()
    return {"commit": commit["git_commit"], "commit_dirty": commit["git_dirty"], "weights": written_files(WEIGHTS_DIR)}


def save_grid(rows: list[list[Any]], path: Path, scale: int = 2) -> None:
    """Paste rows of 64x64 images into one PNG (nearest-neighbour upscaled ``scale`` x)."""
    from PIL import Image

    size = 64 * scale
    sheet = Image.new("RGB", (size * max(len(r) for r in rows), size * len(rows)), (255, 255, 255))
    for y, row in enumerate(rows):
        for x, im in enumerate(row):
            sheet.paste(im.convert("RGB").resize((size, size), Image.Resampling.NEAREST), (x * size, y * size))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Adherence of zoo:shapes under recipes.")
    parser.add_argument("--recipes", default="bf16,torchao-int8wo,bnb-nf4,gguf-q4_0,gguf-q2_k",
                        help="comma-separated recipe strings (fp32 and random are always included)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--images", type=Path, help="folder for sample grids (PNG)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = ["fp32", "random"] + [r for r in args.recipes.split(",") if r]
    results, grids = [], {}
    for variant in variants:
        try:
            result, grid = evaluate_variant(variant, seeds, args.steps)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot run here: record it, go on
            result, grid = {"variant": variant, "error": f"{type(exc).__name__}: {exc}"}, None
        print(json.dumps(result), flush=True)
        results.append(result)
        if grid:
            grids[variant] = grid
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.json, json.dumps({"seeds": seeds, **provenance(), "results": results}, indent=2) + "\n")
    if args.images and grids:
        for variant, grid in grids.items():
            save_grid([grid], args.images / f"{variant}.png")
        save_grid(list(grids.values()), args.images / "variants.png", scale=1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
