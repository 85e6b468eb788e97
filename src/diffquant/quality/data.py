"""Plain data the quality and report code work on, independent of the database layer."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffquant.errors import DiffquantError

# Settings that change the pixels (the device too: CPU and CUDA kernels round differently);
# runs are compared image to image only when these agree.
IMAGE_SETTINGS = ("device", "steps", "num_inference_steps", "height", "width", "guidance_scale", "true_cfg_scale",
                  "max_sequence_length", "negative_prompt", "scheduler", "output_type")


@dataclass(frozen=True)
class ImageInfo:
    id: Any
    run_id: Any
    prompt: str
    prompt_index: int
    seed: int
    path: Path
    latents_path: Path | None = None

    @property
    def key(self) -> tuple[int, int]:
        return (self.prompt_index, self.seed)


@dataclass(frozen=True)
class RunInfo:
    id: Any
    model: str
    recipe: str
    settings: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    images: tuple[ImageInfo, ...] = ()
    sweep_id: Any = None
    recipe_hash: str | None = None
    started_at: Any = None
    finished_at: Any = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def canonical_recipe(name: str) -> str:
    """The canonical spelling of a recipe string (the string itself if it does not parse)."""
    from diffquant.recipes import parse_recipe

    try:
        return parse_recipe(name).name
    except (DiffquantError, ValueError):
        return name.strip()


def image_settings(settings: dict[str, Any]) -> str:
    """The settings that change the pixels, as a comparable string."""
    picked = {k: settings[k] for k in IMAGE_SETTINGS if k in settings}
    return json.dumps(picked, sort_keys=True, default=str)


def settings_label(settings: dict[str, Any]) -> str:
    """Short human label: ``64x64, 2 steps, guidance 3.5``."""
    parts = []
    if "width" in settings and "height" in settings:
        parts.append(f"{settings['width']}x{settings['height']}")
    steps = settings.get("steps", settings.get("num_inference_steps"))
    if steps is not None:
        parts.append(f"{steps} steps")
    if settings.get("guidance_scale") is not None:
        parts.append(f"guidance {settings['guidance_scale']}")
    if settings.get("true_cfg_scale") is not None:
        parts.append(f"true CFG {settings['true_cfg_scale']}")
    return ", ".join(parts)


def comparison_group(run: RunInfo) -> tuple[str, str]:
    """Runs in the same group are comparable image to image: same model and pixel settings."""
    return (run.model, image_settings(run.settings))


def _time_key(run: RunInfo) -> str:
    return str(run.finished_at or run.started_at or "")


def find_reference(run: RunInfo, runs: list[RunInfo], reference: str) -> tuple[RunInfo | None, str]:
    """The reference run for ``run``: recipe ``reference``, same model and pixel settings, status ok.

    Among several, one from the same sweep is preferred, then the most recent. Returns the run
    (or None) and, when None, the reason.
    """
    want = canonical_recipe(reference)
    group = comparison_group(run)
    same_recipe = [r for r in runs if r.ok and r.images and canonical_recipe(r.recipe) == want]
    if not same_recipe:
        return None, f"no successful run of the reference recipe {want!r} in the database"
    candidates = [r for r in same_recipe if comparison_group(r) == group]
    if not candidates:
        return None, (f"no successful {want!r} run of {run.model} with the same settings "
                      f"({settings_label(run.settings) or 'settings differ'})")
    candidates.sort(key=lambda r: (r.sweep_id == run.sweep_id and run.sweep_id is not None, _time_key(r)))
    if any(r.id == run.id for r in candidates):
        return run, ""
    return candidates[-1], ""


def match_images(run: RunInfo, ref: RunInfo) -> list[tuple[ImageInfo, ImageInfo]]:
    """Pairs (image, reference image) with the same prompt index, seed and prompt text."""
    by_key = {img.key: img for img in ref.images}
    pairs = []
    for img in sorted(run.images, key=lambda i: i.key):
        other = by_key.get(img.key)
        if other is not None and other.prompt == img.prompt:
            pairs.append((img, other))
    return pairs
