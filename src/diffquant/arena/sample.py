"""A small synthetic sweep for trying the arena, its tests, its load benchmark and its screenshot,
written through the store's own API (no torch, no model): a bf16 reference and three "quantized"
runs whose pixels carry more and more noise. The PNGs carry their recipe in a text chunk, as
``diffquant generate`` writes it, so the tests can check that the arena never hands it out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

PROMPTS = ("a red circle on a white background", "a blue square on a black background")
SEEDS = (0, 1)
SIZE = 48
RECIPES = {"bf16": 0.0, "quanto-int8": 2.0, "quanto-int4": 14.0, "gguf-q4_0": 30.0}  # recipe -> noise sigma


def shape_image(prompt_index: int, seed: int) -> np.ndarray:
    """The prompt's shape, placed by the seed, with a soft shading so that noise shows."""
    from PIL import ImageDraw

    background, colour = ((255, 255, 255), (220, 30, 30)) if prompt_index == 0 else ((0, 0, 0), (40, 80, 230))
    img = Image.new("RGB", (SIZE, SIZE), background)
    draw = ImageDraw.Draw(img)
    x, y = 8 + 10 * seed, 10 + 6 * seed
    box = (x, y, x + 22, y + 22)
    (draw.ellipse if prompt_index == 0 else draw.rectangle)(box, fill=colour)
    shade = np.linspace(-20, 20, SIZE)[None, :, None]
    return np.clip(np.asarray(img, dtype=np.float64) + shade, 0, 255)


def make_arena_db(folder: Path, recipes: dict[str, float] | None = None) -> Path:
    """Write ``folder/results.db`` and its images; return the database's path."""
    from diffquant.store import ImageRow, ResultsDB, RunRow

    db_path = folder / "results.db"
    settings = {"prompts": list(PROMPTS), "seeds": list(SEEDS), "steps": 2, "height": SIZE, "width": SIZE,
                "device": "cpu"}
    with ResultsDB(db_path) as db:
        for k, (recipe, sigma) in enumerate((recipes or RECIPES).items()):
            rng = np.random.default_rng(k)
            out = folder / "images" / recipe
            out.mkdir(parents=True)
            images = []
            for pi, prompt in enumerate(PROMPTS):
                for seed in SEEDS:
                    base = shape_image(pi, seed)
                    arr = np.clip(base + rng.normal(0, sigma, base.shape) if sigma else base, 0, 255)
                    info = PngImagePlugin.PngInfo()
                    info.add_text("diffquant.recipe", recipe)
                    path = out / f"p{pi}_s{seed}.png"
                    Image.fromarray(arr.round().astype(np.uint8)).save(path, pnginfo=info)
                    images.append(ImageRow(0, 0, prompt, pi, seed, str(path)))
            db.record_run(RunRow(0, "sweep-a", "zoo:tiny-flux", recipe, f"h{k}", settings, "ok", None,
                                 {"call.latency_s.p50": 1.0}, {}, f"2026-01-01T00:0{k}:00Z",
                                 f"2026-01-01T00:0{k}:30Z", run_key=f"k{k}"), images)
        db.record_run(RunRow(0, "sweep-a", "zoo:tiny-flux", "bnb-nf4", "hf", settings, "error", "no GPU", {}, {},
                             "2026-01-01T00:09:00Z", "2026-01-01T00:09:01Z", run_key="kf"))
    return db_path
