"""Metrics that need learned weights: LPIPS, CLIP score, and the zoo:shapes scorer's adherence,
shape accuracy and all-attributes-right.

Nothing is ever downloaded. When a package or the weights are missing, the factory raises
:class:`MetricUnavailable` with the reason and what to do; the metric is then reported
*unavailable*, never filled with a made-up number.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import Any

from diffquant.quality.batch import Batch
from diffquant.quality.metrics import to_tensor
from diffquant.quality.registry import MetricFn, MetricOptions, MetricUnavailable

# torchvision's ImageNet backbones, as named in the torch hub cache (``<hub>/checkpoints/``).
LPIPS_BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}
SHAPES_MODELS = ("zoo:shapes", "zoo:shapes-random")
_CLIP_CHUNK = 16


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def lpips_unavailable_reason(net: str, hub_dir: Path | None = None) -> str | None:
    """Why LPIPS cannot run here (None when it can): torchvision and both weight files are needed."""
    if net not in LPIPS_BACKBONE_FILES:
        return f"unknown LPIPS backbone {net!r}; choose one of {', '.join(LPIPS_BACKBONE_FILES)}"
    if importlib.util.find_spec("torchvision") is None:
        return ("torchvision is not installed; install the torchvision build that matches your torch "
                "(pip install 'diffquant[lpips]')")
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a mismatched build fails at import with many error types
        return f"torchvision does not import beside this torch ({_first_line(exc)})"
    import torch
    import torchmetrics.functional.image as tmi

    lin = Path(tmi.__file__).parent / "lpips_models" / f"{net}.pth"
    if not lin.exists():
        return f"torchmetrics' LPIPS layer weights are missing ({lin})"
    checkpoints = Path(hub_dir or torch.hub.get_dir()) / "checkpoints"
    backbone = checkpoints / LPIPS_BACKBONE_FILES[net]
    if not backbone.exists():
        return (f"the {net} backbone weights are not in the torch hub cache: {backbone} is missing; "
                f"copy {LPIPS_BACKBONE_FILES[net]} there (or set TORCH_HOME)")
    return None


def make_lpips(options: MetricOptions) -> MetricFn:
    reason = lpips_unavailable_reason(options.lpips_net)
    if reason:
        raise MetricUnavailable(reason)
    import torch
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    try:
        module = LearnedPerceptualImagePatchSimilarity(net_type=options.lpips_net, normalize=True)
    except Exception as exc:  # weights present but unloadable
        raise MetricUnavailable(f"LPIPS ({options.lpips_net}) did not load: {_first_line(exc)}") from exc
    module = module.to(options.device).eval()

    def lpips(batch: Batch) -> list[float]:
        values = []
        with torch.no_grad():
            for img, ref in zip(batch.images, batch.references, strict=True):
                module.reset()
                module.update(to_tensor(img, torch.float32).to(options.device),
                              to_tensor(ref, torch.float32).to(options.device))
                values.append(float(module.compute()))
        return values

    return lpips


def _clip_source(source: str) -> str:
    """A local folder, or a Hub id already in the Hugging Face cache; else MetricUnavailable.

    Checked before transformers' model classes are imported, so an absent model costs nothing.
    """
    local = Path(source).expanduser()
    if local.is_dir():
        return str(local)
    hint = ("pass a local CLIP folder with --clip-model (or DIFFQUANT_CLIP_MODEL), or put the model "
            "in the Hugging Face cache on a machine that can download it")
    if local.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1:
        raise MetricUnavailable(f"CLIP model folder {str(local)!r} does not exist; {hint}")
    try:
        from huggingface_hub import constants, try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json")
    except Exception as exc:  # an invalid id, or no huggingface_hub
        raise MetricUnavailable(f"CLIP model {source!r} cannot be looked up offline ({_first_line(exc)}); "
                                f"{hint}") from exc
    if not isinstance(cached, str):
        raise MetricUnavailable(f"CLIP model {source!r} is not in the Hugging Face cache "
                                f"({constants.HF_HUB_CACHE}) and nothing is downloaded; {hint}")
    return source


def make_clip_score(options: MetricOptions) -> MetricFn:
    """CLIP score as torchmetrics defines it: 100 x max(cos(image, prompt), 0)."""
    source = options.clip_model
    ref = _clip_source(source)
    import torch

    try:
        from transformers import AutoTokenizer, CLIPModel
        try:  # transformers >= 5: the PIL processor, without the torchvision-backend warning
            from transformers import CLIPImageProcessorPil as ImageProcessor
        except ImportError:
            from transformers import CLIPImageProcessor as ImageProcessor
    except ImportError as exc:
        raise MetricUnavailable(f"transformers' CLIP classes do not import ({_first_line(exc)})") from exc
    try:
        model = CLIPModel.from_pretrained(ref, local_files_only=True).to(options.device).eval()
        tokenizer = AutoTokenizer.from_pretrained(ref, local_files_only=True)
        processor = ImageProcessor.from_pretrained(ref, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise MetricUnavailable(f"CLIP model {source!r} did not load offline ({_first_line(exc)})") from exc
    max_len = min(int(tokenizer.model_max_length), int(model.config.text_config.max_position_embeddings))

    def features(out: object) -> torch.Tensor:
        # transformers returns a tensor, or (newer versions) an output object with the pooled embeds
        if isinstance(out, torch.Tensor):
            return out
        for name in ("image_embeds", "text_embeds", "pooler_output"):
            value = getattr(out, name, None)
            if isinstance(value, torch.Tensor):
                return value
        raise TypeError(f"unexpected CLIP feature output {type(out).__name__}")

    def clip_score(batch: Batch) -> list[float]:
        scores: list[float] = []
        images = batch.images
        with torch.no_grad():
            for start in range(0, len(images), _CLIP_CHUNK):
                imgs = images[start:start + _CLIP_CHUNK]
                texts = batch.prompts[start:start + _CLIP_CHUNK]
                pixels = processor(images=imgs, return_tensors="pt")["pixel_values"].to(options.device)
                tokens = tokenizer(texts, padding=True, truncation=True, max_length=max_len,
                                   return_tensors="pt").to(options.device)
                img_f = features(model.get_image_features(pixel_values=pixels))
                txt_f = features(model.get_text_features(input_ids=tokens["input_ids"],
                                                         attention_mask=tokens.get("attention_mask")))
                cos = torch.nn.functional.cosine_similarity(img_f.float(), txt_f.float(), dim=-1)
                scores.extend((100.0 * cos.clamp(min=0)).tolist())
        return scores

    return clip_score


# The scorer's reading of an image, shared by the three zoo:shapes metrics: each of them scores
# every run, so without it the CNN would read the same images three times. Keyed by the pixels
# (not the path) so a re-generated image is read again; bounded, as a long session sees many runs.
_SHAPES_READS: OrderedDict[bytes, dict[str, str]] = OrderedDict()
_SHAPES_READS_MAX = 4096


def _image_key(image: Any) -> bytes:
    import numpy as np
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    digest = hashlib.blake2b(img.tobytes(), digest_size=16)
    digest.update(f"{img.mode}{img.size}".encode())
    return digest.digest()


def shapes_reads(images: list[Any]) -> list[dict[str, str]]:
    """The attributes the shipped scorer reads from each image; images read before are not re-read."""
    from diffquant.zoo.shapes.scorer import predict

    keys = [_image_key(im) for im in images]
    todo = {k: im for k, im in zip(keys, images) if k not in _SHAPES_READS}
    if todo:
        for key, seen in zip(todo, predict(list(todo.values()))):
            _SHAPES_READS[key] = seen
    out = []
    for key in keys:
        _SHAPES_READS.move_to_end(key)
        out.append(_SHAPES_READS[key])
    while len(_SHAPES_READS) > _SHAPES_READS_MAX:
        _SHAPES_READS.popitem(last=False)
    return out


def shapes_hits(batch: Batch) -> list[dict[str, bool]]:
    """Per image, for each attribute its prompt names, whether the scorer reads it back."""
    from diffquant.errors import DiffquantError
    from diffquant.zoo.shapes.data import parse_prompt

    if batch.model not in SHAPES_MODELS:
        raise MetricUnavailable(f"only scores images of {' / '.join(SHAPES_MODELS)}; "
                                f"this run's model is {batch.model}")
    try:
        reads = shapes_reads(list(batch.images))
    except DiffquantError as exc:  # the shipped scorer's weights are missing
        raise MetricUnavailable(f"the zoo:shapes scorer does not load ({_first_line(exc)})") from exc
    if len(reads) != len(batch):
        raise MetricUnavailable(f"the shapes scorer returned {len(reads)} readings for {len(batch)} images")
    return [{a: seen[a] == v for a, v in parse_prompt(prompt).items()}
            for seen, prompt in zip(reads, batch.prompts, strict=True)]


def _load_shapes_scorer() -> None:
    """The scorer's module must import; its weights are read on first use (cached by ``load_scorer``)."""
    try:
        import diffquant.zoo.shapes.scorer  # noqa: F401
    except Exception as exc:
        raise MetricUnavailable(f"the zoo:shapes scorer does not load ({_first_line(exc)})") from exc


def make_shapes_adherence(options: MetricOptions) -> MetricFn:
    """Per image, the fraction of the attributes its prompt names that the scorer reads back
    (``scorer.score_images``: a prompt naming none scores 0)."""
    _load_shapes_scorer()

    def shapes_adherence(batch: Batch) -> list[float]:
        return [sum(h.values()) / len(h) if h else 0.0 for h in shapes_hits(batch)]

    return shapes_adherence


def make_shapes_shape(options: MetricOptions) -> MetricFn:
    """Per image, 1 when the scorer reads back the shape the prompt names, else 0."""
    _load_shapes_scorer()

    def shapes_shape(batch: Batch) -> list[float]:
        hits = shapes_hits(batch)
        missing = [p for p, h in zip(batch.prompts, hits, strict=True) if "shape" not in h]
        if missing:
            raise MetricUnavailable(f"{len(missing)} prompt(s) name no shape (e.g. {missing[0]!r}); "
                                    "shape accuracy needs every prompt to name one")
        return [float(h["shape"]) for h in hits]

    return shapes_shape


def make_shapes_all_correct(options: MetricOptions) -> MetricFn:
    """Per image, 1 when every attribute its prompt names is read back (adherence exactly 1)."""
    _load_shapes_scorer()

    def shapes_all_correct(batch: Batch) -> list[float]:
        return [float(bool(h) and all(h.values())) for h in shapes_hits(batch)]

    return shapes_all_correct
