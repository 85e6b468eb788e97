"""Prompt adherence for the ``shapes`` model: a small CNN reads the attributes back from an image.

The scorer is trained on the procedural generator's own images (all shape/colour pairs, with noise
and blur augmentation; see ``train.py``) and predicts shape, colour, background, position and size.
The adherence of an image to its prompt is the fraction of the attributes the prompt *names* that
the scorer reads back correctly; a model's adherence is its mean over :data:`EVAL_PROMPTS_SEEN`
(combinations seen in training) or :data:`EVAL_PROMPTS_HELDOUT` (held-out shape/colour pairs).

    from diffquant.zoo.shapes.scorer import score_images, EVAL_PROMPTS_SEEN
    scores = score_images(images, prompts)  # one float in [0, 1] per image
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from diffquant.zoo.shapes.data import ATTRIBUTES, CHOICES, parse_prompt, sample_scene

IMAGE_SIZE = 64
EVAL_SEED = 2024


def _eval_prompts(split: str, n: int, first: Sequence[str] = ()) -> list[str]:
    rng = np.random.default_rng(EVAL_SEED + (split == "heldout"))
    out = list(first)
    while len(out) < n:
        text = sample_scene(rng, split).caption
        if text not in out:
            out.append(text)
    return out


EVAL_PROMPTS_SEEN: list[str] = _eval_prompts("train", 40, first=["a red circle on a white background"])
EVAL_PROMPTS_HELDOUT: list[str] = _eval_prompts("heldout", 20)


def build_network() -> Any:
    """The scorer CNN: 64x64 RGB -> one logit vector per attribute (``ATTRIBUTES`` order)."""
    import torch
    from torch import nn

    class ShapesScorer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            chans = (3, 24, 48, 64, 96)
            layers: list[nn.Module] = []
            for cin, cout in itertools.pairwise(chans):
                layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout),
                           nn.ReLU(inplace=True)]
            self.features = nn.Sequential(*layers)  # 64x64x3 -> 4x4x96
            self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(96 * 4 * 4, 256), nn.ReLU(inplace=True))
            self.heads = nn.ModuleDict({a: nn.Linear(256, len(CHOICES[a])) for a in ATTRIBUTES})

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            h = self.trunk(self.features(x))
            return {a: head(h) for a, head in self.heads.items()}

    return ShapesScorer()


def to_tensor(images: Sequence[Any]) -> Any:
    """PIL images (or uint8 HxWx3 arrays) -> float tensor (B, 3, 64, 64) in [-1, 1]."""
    import torch
    from PIL import Image

    arrays = []
    for im in images:
        if not isinstance(im, Image.Image):
            im = Image.fromarray(np.asarray(im))
        im = im.convert("RGB")
        if im.size != (IMAGE_SIZE, IMAGE_SIZE):
            im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(im))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


@lru_cache(maxsize=4)
def load_scorer(path: str | Path | None = None) -> Any:
    """The trained scorer network (eval mode, float32, CPU); ``path`` defaults to the shipped file."""
    from safetensors.torch import load_file

    from diffquant.errors import DiffquantError
    from diffquant.zoo.shapes.model import SCORER_FILE

    path = Path(path or SCORER_FILE)
    if not path.is_file():
        raise DiffquantError(f"The shapes scorer's weights are missing ({path}).",
                             hint=f"train them with `python scripts/train_shapes.py --out {path.parent}`")
    net = build_network()
    net.load_state_dict(load_file(str(path)))
    return net.eval()


def predict(images: Sequence[Any], scorer: Any = None) -> list[dict[str, str]]:
    """The attributes the scorer reads from each image."""
    import torch

    net = scorer if scorer is not None else load_scorer()
    out: list[dict[str, str]] = []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            logits = net(to_tensor(images[start:start + 256]))
            idx = {a: logits[a].argmax(-1).tolist() for a in ATTRIBUTES}
            for i in range(len(idx["shape"])):
                out.append({a: CHOICES[a][idx[a][i]] for a in ATTRIBUTES})
    return out


def score_images(images: list[Any], prompts: list[str], scorer: Any = None) -> list[float]:
    """Per-image adherence in [0, 1]: the fraction of the attributes ``prompts[i]`` names that
    the scorer reads back from ``images[i]`` (a prompt naming none of them scores 0)."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    scores = []
    for seen, prompt in zip(predict(images, scorer), prompts):
        wanted = parse_prompt(prompt)
        scores.append(sum(seen[a] == v for a, v in wanted.items()) / len(wanted) if wanted else 0.0)
    return scores


def attribute_accuracy(images: list[Any], prompts: list[str], scorer: Any = None) -> dict[str, float]:
    """Per attribute, the fraction of the prompts naming it whose image shows it (where the
    adherence is lost: shape, colour, background, position or size)."""
    hits: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    for seen, prompt in zip(predict(images, scorer), prompts):
        for a, v in parse_prompt(prompt).items():
            hits[a].append(seen[a] == v)
    return {a: round(float(np.mean(h)), 4) for a, h in hits.items() if h}


def model_pipeline_kwargs(pipe: Any) -> dict[str, Any]:
    """The pipeline arguments the model folder's ``diffquant.json`` fixes (e.g. true CFG), for a
    pipeline from ``diffquant.load_pipeline`` or a plain ``FluxPipeline.from_pretrained(folder)``.
    Read from the folder's metadata (the zoo's own file), not through the pipeline module."""
    from diffquant.zoo.meta import read_model_meta

    info = getattr(pipe, "_diffquant_load_info", None)
    folder = Path(info.model_dir) if info is not None else Path(str(getattr(pipe.config, "_name_or_path", "") or "."))
    meta = read_model_meta(folder)
    return dict(meta.pipeline_kwargs) if meta is not None else {}


def generate(pipe: Any, prompts: Sequence[str], seeds: Sequence[int] = (0,), steps: int | None = None,
             batch_size: int = 16, **pipeline_kwargs: Any) -> tuple[list[Any], list[str]]:
    """Images of every prompt for every seed (seeded CPU generators), in batches, with the model's
    own pipeline arguments (:func:`model_pipeline_kwargs`) unless ``pipeline_kwargs`` override them."""
    import torch

    from diffquant.zoo.shapes import DEFAULT_SIZE, DEFAULT_STEPS

    extra = {**model_pipeline_kwargs(pipe), **pipeline_kwargs}
    jobs = [(p, s) for s in seeds for p in prompts]
    images: list[Any] = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        gens = [torch.Generator("cpu").manual_seed(s) for _, s in chunk]
        with torch.no_grad():
            out = pipe([p for p, _ in chunk], height=DEFAULT_SIZE, width=DEFAULT_SIZE, generator=gens,
                       num_inference_steps=steps or DEFAULT_STEPS, **extra)
        images += out.images
    return images, [p for p, _ in jobs]


def evaluate(pipe: Any, seeds: Sequence[int] = (0,), steps: int | None = None, scorer: Any = None,
             prompts: dict[str, Sequence[str]] | None = None) -> dict[str, float]:
    """Mean adherence of ``pipe`` on each prompt set ({"seen": ..., "heldout": ...} by default)."""
    prompts = prompts or {"seen": EVAL_PROMPTS_SEEN, "heldout": EVAL_PROMPTS_HELDOUT}
    result = {}
    for name, plist in prompts.items():
        images, used = generate(pipe, plist, seeds, steps)
        result[name] = float(np.mean(score_images(images, used, scorer)))
    return result
