"""The metric registry: names → lazily imported metric factories, with their direction.

Each entry names its factory as ``"module:attr"`` so that listing metrics imports neither torch
nor torchmetrics; the factory is imported on first use. A factory is called once per scoring
session with :class:`MetricOptions` and returns a callable ``metric(batch) -> list[float]`` (one
value per image of the batch, in order). Factories and metrics raise :class:`MetricUnavailable`
with a reason for people when they cannot run here (missing package, weights not found offline,
wrong model); that reason is stored and shown, and no number is ever made up.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from diffquant.errors import unknown_choice
from diffquant.quality.errors import MetricUnavailable

if TYPE_CHECKING:  # pragma: no cover
    from diffquant.quality.batch import Batch

MetricFn = Callable[["Batch"], list[float]]

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"


@dataclass(frozen=True)
class MetricOptions:
    """Settings shared by the metrics of one scoring session."""

    clip_model: str = field(default_factory=lambda: os.environ.get("DIFFQUANT_CLIP_MODEL", DEFAULT_CLIP_MODEL))
    lpips_net: str = "alex"  # alex | vgg | squeeze
    device: str = "cpu"


@dataclass(frozen=True)
class MetricInfo:
    name: str
    factory: str  # "module:attr"; attr(options: MetricOptions) -> MetricFn
    higher_is_better: bool
    needs_reference: bool  # compares each image with the reference run's matching image
    unit: str  # shown beside every value ("dB", "" for unitless)
    description: str
    perfect: float | None = None  # the value for an image identical to the reference (PSNR: inf)

    def load(self, options: MetricOptions) -> MetricFn:
        """Import the factory and build the metric; may raise :class:`MetricUnavailable`."""
        module_name, _, attr = self.factory.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise MetricUnavailable(f"cannot import {module_name} ({exc})") from exc
        make = getattr(module, attr)
        return make(options)


class MetricRegistry:
    """Name → :class:`MetricInfo`. Duplicate names are refused; unknown names get suggestions."""

    def __init__(self) -> None:
        self._entries: dict[str, MetricInfo] = {}

    def register(self, info: MetricInfo) -> MetricInfo:
        if info.name in self._entries:
            raise ValueError(f"metric {info.name!r} is already registered "
                             f"(by {self._entries[info.name].factory})")
        if ":" not in info.factory:
            raise ValueError(f"metric {info.name!r}: factory must be 'module:attr', got {info.factory!r}")
        self._entries[info.name] = info
        return info

    def get(self, name: str) -> MetricInfo:
        key = name.strip().lower()
        if key not in self._entries:
            raise unknown_choice("metric", name, self._entries,
                                 hint="run `diffquant score --list-metrics` to see them all")
        return self._entries[key]

    def resolve(self, names: list[str] | None) -> list[MetricInfo]:
        """The entries for ``names`` (all, in registration order, for None), duplicates dropped."""
        if names is None:
            return list(self._entries.values())
        out: list[MetricInfo] = []
        for name in names:
            info = self.get(name)
            if info not in out:
                out.append(info)
        return out

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[MetricInfo]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


METRICS = MetricRegistry()


def register_metric(name: str, factory: str, *, higher_is_better: bool, needs_reference: bool,
                    unit: str = "", description: str = "", perfect: float | None = None) -> MetricInfo:
    """Add a metric to the global registry (see the module docstring for the factory contract)."""
    return METRICS.register(MetricInfo(name=name, factory=factory, higher_is_better=higher_is_better,
                                       needs_reference=needs_reference, unit=unit, description=description,
                                       perfect=perfect))


_M = "diffquant.quality.metrics"
_L = "diffquant.quality.learned"
register_metric("psnr", f"{_M}:make_psnr", higher_is_better=True, needs_reference=True, unit="dB",
                perfect=float("inf"),
                description="peak signal-to-noise ratio vs the reference image (inf when identical)")
register_metric("ssim", f"{_M}:make_ssim", higher_is_better=True, needs_reference=True, perfect=1.0,
                description="structural similarity vs the reference image (1 when identical)")
register_metric("ms-ssim", f"{_M}:make_ms_ssim", higher_is_better=True, needs_reference=True, perfect=1.0,
                description="multi-scale SSIM vs the reference; scales reduced for small images (noted)")
register_metric("lpips", f"{_L}:make_lpips", higher_is_better=False, needs_reference=True, perfect=0.0,
                description="learned perceptual distance vs the reference (needs torchvision + "
                            "backbone weights in the torch hub cache)")
register_metric("clip-score", f"{_L}:make_clip_score", higher_is_better=True, needs_reference=False,
                description="100 x cosine(CLIP image, CLIP prompt), clipped at 0; CLIP weights must "
                            "be local (path) or in the Hugging Face cache")
register_metric("shapes-adherence", f"{_L}:make_shapes_adherence", higher_is_better=True,
                needs_reference=False,
                description="prompt adherence of the built-in zoo:shapes model (its own scorer): per image, "
                            "the fraction of the attributes the prompt names that are read back")
register_metric("shapes-shape", f"{_L}:make_shapes_shape", higher_is_better=True, needs_reference=False,
                description="zoo:shapes: 1 when the scorer reads back the shape the prompt names, else 0 "
                            "(mean: shape accuracy, the attribute adherence averages away)")
register_metric("shapes-all-correct", f"{_L}:make_shapes_all_correct", higher_is_better=True,
                needs_reference=False,
                description="zoo:shapes: 1 when every attribute the prompt names is read back, else 0")
register_metric("latent-rel-error", f"{_M}:make_latent_rel_error", higher_is_better=False,
                needs_reference=True, perfect=0.0,
                description="relative error of the final latents, |q - ref| / |ref|")
