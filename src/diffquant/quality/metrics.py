"""Pixel and latent metrics against the reference: PSNR, SSIM, MS-SSIM (torchmetrics) and the
relative error of the final latents. torch and torchmetrics are imported inside the factories."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffquant.quality.batch import Batch
from diffquant.quality.registry import MetricFn, MetricOptions, MetricUnavailable

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, torchmetrics' default
SSIM_KERNEL = 11


def to_tensor(image: Image.Image, dtype: Any = None) -> torch.Tensor:
    """A PIL image as a (1, 3, H, W) tensor in [0, 1] (float64 unless ``dtype`` says otherwise)."""
    import numpy as np
    import torch

    array = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()
    return tensor.to(dtype or torch.float64)


def _pairs(batch: Batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for i, (img, ref) in enumerate(zip(batch.images, batch.references, strict=True)):
        if img.size != ref.size:
            raise MetricUnavailable(f"image {i} is {img.size[0]}x{img.size[1]} but its reference is "
                                    f"{ref.size[0]}x{ref.size[1]}")
        out.append((to_tensor(img), to_tensor(ref)))
    return out


def make_psnr(options: MetricOptions) -> MetricFn:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    def psnr(batch: Batch) -> list[float]:
        return [float(peak_signal_noise_ratio(x, y, data_range=1.0)) for x, y in _pairs(batch)]

    return psnr


def make_ssim(options: MetricOptions) -> MetricFn:
    from torchmetrics.functional.image import structural_similarity_index_measure

    def ssim(batch: Batch) -> list[float]:
        values = []
        for x, y in _pairs(batch):
            if min(x.shape[-2:]) < SSIM_KERNEL:
                raise MetricUnavailable(f"SSIM needs images of at least {SSIM_KERNEL} px a side")
            values.append(float(structural_similarity_index_measure(x, y, data_range=1.0)))
        return values

    return ssim


def ms_ssim_plan(height: int, width: int) -> tuple[tuple[float, ...], int] | None:
    """Betas and kernel size that MS-SSIM can use at this size (None if none can).

    The standard 5 scales with an 11-px Gaussian need images larger than 160 px a side. Smaller
    images keep the kernel and drop the coarsest scales (betas renormalised to sum to 1), down to
    2 scales; below that the kernel shrinks. The rule combines torchmetrics' own check with
    "the coarsest scale is at least one kernel wide".
    """
    side = min(height, width)

    def fits(n: int, k: int) -> bool:
        return side >= 2 ** n and side // max(1, n - 1) ** 2 > k - 1 and side // 2 ** (n - 1) >= k

    candidates = [(n, SSIM_KERNEL) for n in range(len(MS_SSIM_BETAS), 1, -1)]
    candidates += [(2, k) for k in (9, 7, 5, 3)]
    for n, k in candidates:
        if fits(n, k):
            betas = MS_SSIM_BETAS[:n]
            total = sum(betas)
            return tuple(b / total for b in betas), k
    return None


def make_ms_ssim(options: MetricOptions) -> MetricFn:
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    def ms_ssim(batch: Batch) -> list[float]:
        values = []
        for x, y in _pairs(batch):
            h, w = x.shape[-2:]
            plan = ms_ssim_plan(h, w)
            if plan is None:
                raise MetricUnavailable(f"MS-SSIM needs images of at least 6 px a side; these are {w}x{h}")
            betas, kernel = plan
            if len(betas) != len(MS_SSIM_BETAS) or kernel != SSIM_KERNEL:
                batch.note(f"adapted to {w}x{h} images: {len(betas)} scales (betas renormalised), "
                           f"kernel {kernel}; the standard 5 scales with kernel 11 need > 160 px")
            values.append(float(multiscale_structural_similarity_index_measure(
                x, y, data_range=1.0, betas=betas, kernel_size=kernel)))
        return values

    return ms_ssim


def load_latents(path: Path) -> torch.Tensor:
    """The final latents saved beside an image: the file's only tensor, or its ``latents`` key."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    if "latents" in tensors:
        return tensors["latents"]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise MetricUnavailable(f"{path} holds {len(tensors)} tensors and none is named 'latents'")


def relative_error(q: torch.Tensor, ref: torch.Tensor) -> float:
    """‖q − ref‖ / ‖ref‖ in float64 (nan when the reference is all zeros)."""
    q64, r64 = q.double().flatten(), ref.double().flatten()
    if q64.shape != r64.shape:
        raise MetricUnavailable(f"latent shapes differ: {tuple(q.shape)} vs {tuple(ref.shape)}")
    denom = float(r64.norm())
    return float((q64 - r64).norm()) / denom if denom > 0 else math.nan


def make_latent_rel_error(options: MetricOptions) -> MetricFn:
    def latent_rel_error(batch: Batch) -> list[float]:
        refs = batch.reference_latent_paths
        if not batch.latent_paths or any(p is None for p in batch.latent_paths):
            raise MetricUnavailable("this run saved no latents beside its images")
        if refs is None or any(p is None for p in refs):
            raise MetricUnavailable("the reference run saved no latents beside its images")
        return [relative_error(load_latents(p), load_latents(r))  # type: ignore[arg-type]
                for p, r in zip(batch.latent_paths, refs, strict=True)]

    return latent_rel_error
