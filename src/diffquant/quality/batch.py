"""What a metric sees: the images of one run, matched one to one with the reference's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from diffquant.quality.errors import MetricUnavailable

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


def load_rgb(path: Path) -> Image.Image:
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


@dataclass
class Batch:
    """The images of one run (and, for reference metrics, the matching reference images).

    ``images``/``references`` are loaded on first access. ``note`` lets a metric record how it
    adapted itself (e.g. fewer MS-SSIM scales for small images); it is stored with the scores.
    """

    model: str
    prompts: list[str]
    image_paths: list[Path]
    reference_paths: list[Path] | None = None
    latent_paths: list[Path | None] = field(default_factory=list)
    reference_latent_paths: list[Path | None] | None = None
    notes: list[str] = field(default_factory=list)
    preloaded: list[Image.Image] | None = None  # tests and in-memory callers
    preloaded_references: list[Image.Image] | None = None
    loader: Callable[[Path], Image.Image] = load_rgb  # a caching loader shares images across runs

    def __len__(self) -> int:
        return len(self.prompts)

    @cached_property
    def images(self) -> list[Image.Image]:
        if self.preloaded is not None:
            return self.preloaded
        return [self.loader(p) for p in self.image_paths]

    @cached_property
    def references(self) -> list[Image.Image]:
        if self.preloaded_references is not None:
            return self.preloaded_references
        if self.reference_paths is None:
            raise MetricUnavailable("no reference images were matched")
        return [self.loader(p) for p in self.reference_paths]

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
