"""The card of a single GGUF file written by ``diffquant export gguf``: the file's folder gets the
component's ``config.json`` (so ``from_single_file(file, config=folder)`` needs nothing else) and a
``README.md`` with the exact loading lines and, from a results database, the measured table of the
matching ``gguf-<type>`` recipe."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from diffquant.errors import DiffquantError


def gguf_recipe(qtype: str, keep: str | None, layout: str) -> Any:
    """The recipe that loads this model with the same GGUF file (what bench runs are keyed on)."""
    from diffquant.recipes import parse_recipe

    options = []
    if keep:
        options.append(f"keep={keep.replace(',', '|')}")
    if layout != "diffusers":
        options.append(f"layout={layout}")
    return parse_recipe(f"gguf-{qtype.lower()}" + (f"({','.join(options)})" if options else ""))


def plain_gguf_code(folder: str, file: str, class_name: str, pipeline_class: str, pipeline: str) -> str:
    return "\n".join([
        "import torch",
        f"from diffusers import {class_name}, {pipeline_class}, GGUFQuantizationConfig",
        "",
        f'folder = "{folder}"  # this folder: the .gguf file and its config.json',
        "dtype = torch.bfloat16",
        f"transformer = {class_name}.from_single_file(",
        f'    f"{{folder}}/{file}", config=folder,',
        "    quantization_config=GGUFQuantizationConfig(compute_dtype=dtype), torch_dtype=dtype)",
        f'pipe = {pipeline_class}.from_pretrained("{pipeline}", transformer=transformer, torch_dtype=dtype)',
        ""])


OWN_FILES = ("config.json", "README.md", "images")


def check_card_folder(gguf_path: Path) -> None:
    """A card goes beside the .gguf: refuse a folder that holds anything else (the current directory,
    say), so that config.json, README.md and images/ cannot clash with other files."""
    folder = gguf_path.parent
    others = [p.name for p in folder.iterdir() if p.name not in OWN_FILES and p != gguf_path] if folder.is_dir() else []
    if others:
        raise DiffquantError(f"{str(folder)!r} holds other files ({', '.join(sorted(others)[:3])}); the card's "
                             "config.json, README.md and images/ go beside the .gguf file.",
                             hint="write the .gguf into its own folder: -o NEWDIR/name.gguf")


def write_gguf_card(gguf_path: Path, *, model_ref: str, model_dir: Path, component: str, qtype: str,
                    keep: str | None, layout: str, bytes_written: int, type_counts: dict[str, int],
                    card_from: Path | None = None, base_model: str | None = None) -> Path:
    """Write ``config.json`` and ``README.md`` beside ``gguf_path``; returns the card's path."""
    from huggingface_hub import ModelCard, ModelCardData

    from diffquant._version import __version__
    from diffquant.atomic import write_text_atomic as write_atomic
    from diffquant.export.card import CARD, HUB_ID, _measured_section, hub_base_model, measured_metadata
    from diffquant.export.measured import find_measured
    from diffquant.versions import library_versions

    folder = gguf_path.parent
    source_config = model_dir / component / "config.json"
    if not source_config.is_file():
        source_config = model_dir / "config.json"  # a single model folder
    config = folder / "config.json"
    if config.exists() and json.loads(config.read_text()) != json.loads(source_config.read_text()):
        raise DiffquantError(f"{str(config)!r} exists and is another model's config.",
                             hint="write the .gguf into its own folder (-o NEWDIR/name.gguf)")
    shutil.copy2(source_config, config)
    class_name = json.loads(source_config.read_text())["_class_name"]
    index = model_dir / "model_index.json"
    pipeline_class = json.loads(index.read_text())["_class_name"] if index.is_file() else "DiffusionPipeline"
    recipe = gguf_recipe(qtype, keep, layout)
    measured = find_measured(card_from, model_ref, recipe.to_dict(), recipe.hash) if card_from else None
    base = base_model or hub_base_model(model_ref)
    if base is not None and not HUB_ID.match(base):
        raise DiffquantError(f"--base-model {base!r} is not a Hub id (org/name).")
    data: dict[str, Any] = {
        "library_name": "diffusers", "pipeline_tag": "text-to-image",
        "tags": ["diffquant", "quantized", "gguf", f"gguf-{qtype.lower()}", f"diffusers:{pipeline_class}"],
        "diffquant": {"recipe": recipe.name, "recipe_hash": recipe.hash, "source_model": model_ref,
                      "diffquant_version": __version__,
                      "quantization": {component: {"backend": "gguf", "type": qtype.lower(), "format": "gguf-file",
                                                   "file": gguf_path.name, "layout": layout, "keep": keep,
                                                   "file_bytes": bytes_written, "tensor_types": type_counts}}}}
    if base is not None:
        data["base_model"], data["base_model_relation"] = base, "quantized"
    if measured is not None:
        data["diffquant"]["measured"] = measured_metadata(measured)
    # The rest of the pipeline: the Hub id, or the local folder the GGUF was made from (a zoo model's cache).
    pipeline = base or hub_base_model(model_ref) or str(model_dir)
    counts = ", ".join(f"{n} {t}" for t, n in sorted(type_counts.items(), key=lambda kv: -kv[1]))
    lines = [f"# {gguf_path.name}: the {component} of `{model_ref}` as GGUF {qtype}", "",
             f"Written by diffquant {__version__} (`diffquant export gguf`, layout {layout}"
             + (f", keep `{keep}`" if keep else "") + f"): {bytes_written:,} bytes "
             f"({bytes_written / 2**20:.1f} MiB); tensors: {counts}.", "",
             "## How to load", "", "With diffusers (CPU or GPU; diffusers dequantizes per layer):", "", "```python",
             plain_gguf_code(gguf_path.parent.name, gguf_path.name, class_name, pipeline_class, pipeline).rstrip(),
             "```", ""]
    if layout == "bfl":
        lines += [("The tensor names are FLUX's original ones (ComfyUI); diffusers converts them only at "
                  "FLUX's real width (3072)."), ""]
    lines += ["With diffquant:", "", "```python", "import diffquant", "",
              f'pipe = diffquant.load_pipeline("{pipeline}", "gguf-{qtype.lower()}(path={folder.name}/{gguf_path.name})")', "```", ""]
    if measured is not None:
        images = _copy(folder, measured)
        lines += _measured_section(measured, images)
    lines += ["## Versions", "", "| package | version |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(library_versions().items()) if v]
    card = ModelCard(f"---\n{ModelCardData(**data).to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    write_atomic(folder / CARD, str(card))
    return folder / CARD


def _copy(folder: Path, measured: Any) -> list[tuple[str, str | None, str, int]]:
    from diffquant.export.card import _copy_samples

    return _copy_samples(folder, measured)
