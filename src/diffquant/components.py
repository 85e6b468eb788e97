"""Model references and pipeline components: where a model lives, what it is made of, and which
components a recipe's default target means (the denoiser and the large text encoder)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from diffquant.errors import DiffquantError, unknown_choice
from diffquant.recipes.catalog import BACKENDS
from diffquant.recipes.model import DEFAULT_TARGET, QuantSpec, Recipe
from diffquant.zoo import ZOO_PREFIX

DENOISER_NAMES = ("transformer", "unet", "prior")
# Text encoders big enough to be worth quantizing (FLUX's and SD3's T5, newer LLM encoders).
LARGE_TEXT_ENCODER_CLASSES = ("T5EncoderModel", "UMT5EncoderModel", "Gemma2Model", "Qwen2_5_VLForConditionalGeneration",
                              "LlamaForCausalLM", "Qwen3Model", "Gemma3ForConditionalGeneration")


@dataclass(frozen=True)
class Component:
    name: str
    library: str  # "diffusers" | "transformers"
    class_name: str


def resolve_model(model: str) -> Path:
    """A local pipeline folder for a model reference: zoo:NAME, a local folder, or a Hub id."""
    if model.startswith(ZOO_PREFIX):
        from diffquant.zoo import ensure_model

        return ensure_model(model[len(ZOO_PREFIX):])
    path = local_pipeline_folder(model)
    if path is not None:
        return path
    if model.count("/") == 1 and not model.startswith((".", "/")):
        return _hub_snapshot(model)
    raise DiffquantError(f"Cannot find model {model!r}.",
                         hint="give a Hub id (org/name), a local pipeline folder, or zoo:NAME "
                              "(`diffquant recipes --zoo` lists the zoo)")


def local_pipeline_folder(model: str) -> Path | None:
    """``model`` as an existing local pipeline folder; None when no such path exists."""
    path = Path(model).expanduser()
    if not path.exists():
        return None
    if not (path / "model_index.json").is_file():
        raise DiffquantError(f"{model!r} is a local path but not a diffusers pipeline folder "
                             "(no model_index.json).",
                             hint="point at the folder that save_pretrained wrote, or use zoo:NAME")
    return path


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model",
                                                               "tokenizer*/*", "*/*.json"]))
    except Exception as exc:  # noqa: BLE001 - every hub failure means the same thing to the user
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise DiffquantError(
            f"Could not get {repo_id!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}).",
            hint=("the Hub is unreachable or HF_HUB_OFFLINE=1 is set" if offline else "check the id, your "
                  "network and `hf auth login` for gated models") + "; or pass a local folder / zoo:NAME",
        ) from None


def read_components(model_dir: Path) -> dict[str, Component]:
    index = json.loads((model_dir / "model_index.json").read_text())
    out = {}
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2 or value[0] is None:
            continue
        out[name] = Component(name, str(value[0]), str(value[1]))
    return out


def pipeline_class_name(model_dir: Path) -> str:
    return str(json.loads((model_dir / "model_index.json").read_text())["_class_name"])


def denoiser_name(components: dict[str, Component]) -> str:
    for name in DENOISER_NAMES:
        if name in components:
            return name
    raise DiffquantError("This pipeline has no denoiser component (transformer/unet).",
                         choices=components, hint="quantize a named component with @component")


def large_text_encoder_name(components: dict[str, Component]) -> str | None:
    for name, comp in components.items():
        if name.startswith("text_encoder") and comp.class_name in LARGE_TEXT_ENCODER_CLASSES:
            return name
    return None


def is_module_component(comp: Component) -> bool:
    return comp.library in ("diffusers", "transformers") and not comp.class_name.endswith(
        ("Scheduler", "Tokenizer", "TokenizerFast", "TokenizersBackend", "Processor", "ImageProcessor"))


def resolve_targets(recipe: Recipe, components: dict[str, Component]) -> dict[str, QuantSpec]:
    """Map every quantized component name to its spec (explicit @targets win over the default)."""
    targets: dict[str, QuantSpec] = {}
    module_names = [n for n, c in components.items() if is_module_component(c)]
    for spec in recipe.quant:
        if spec.target == DEFAULT_TARGET:
            continue
        if spec.target not in components or not is_module_component(components[spec.target]):
            raise unknown_choice("component", spec.target, module_names,
                                 hint="name a model component of this pipeline after @")
        targets[spec.target] = spec
    default = recipe.spec_for(DEFAULT_TARGET)
    if default is not None:
        names = [denoiser_name(components)]
        large = large_text_encoder_name(components)
        if large and not BACKENDS[default.backend].denoiser_only:
            names.append(large)
        for name in names:
            targets.setdefault(name, default)
    return targets
