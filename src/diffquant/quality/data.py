"""Plain data the quality and report code work on, independent of the database layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffquant.store.reference import (  # re-exported: quality, arena and report import them from here
    IMAGE_SETTINGS,
    canonical_recipe,
    choose_reference,
    comparison_group,
    image_settings,
    settings_label,
)

__all__ = ["IMAGE_SETTINGS", "ImageInfo", "RunInfo", "canonical_recipe", "comparison_group", "find_reference",
           "image_settings", "match_images", "settings_label"]

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


def find_reference(run: RunInfo, runs: list[RunInfo], reference: str) -> tuple[RunInfo | None, str]:
    """The reference run for ``run`` whose images it can be scored against: the one rule
    (``store.reference.choose_reference``) among the runs that saved images."""
    return choose_reference(run, [r for r in runs if r.images], reference)


def match_images(run: RunInfo, ref: RunInfo) -> list[tuple[ImageInfo, ImageInfo]]:
    """Pairs (image, reference image) with the same prompt index, seed and prompt text."""
    by_key = {img.key: img for img in ref.images}
    pairs = []
    for img in sorted(run.images, key=lambda i: i.key):
        other = by_key.get(img.key)
        if other is not None and other.prompt == img.prompt:
            pairs.append((img, other))
    return pairs
