"""Saving a quantized pipeline and loading it back (``diffquant quantize``).

Each component is saved the way its backend supports best:
- torchao (and bitsandbytes on CUDA): the library's own ``save_pretrained`` (quantization config
  in config.json; torchao needs pickle-based ``.bin`` files);
- optimum-quanto: its state dict plus its quantization map, reloaded with ``requantize``
  (diffusers refuses to serialise quanto models);
- bitsandbytes on CPU: its packed state dict, reloaded with ``Params4bit.from_prequantized``;
- GGUF: the .gguf file itself;
- FP8 layerwise casting: the float8 weights, re-hooked on load.
A ``diffquant_quantized.json`` at the top records the recipe, versions and per-component formats.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from diffquant.errors import DiffquantError
from diffquant.recipes.model import QuantSpec

MARKER = "diffquant_quantized.json"
COMPONENT_MARKER = "diffquant_component.json"
WEIGHTS = "diffquant_weights.safetensors"


def save_quantized(pipe: Any, out_dir: Path, *, link_unquantized: bool = False) -> Path:
    """Write ``pipe`` (loaded by diffquant) to ``out_dir`` atomically; refuses to overwrite.

    ``link_unquantized`` symlinks unquantized components to the source model instead of copying
    them (the quantized-weights cache does this; an export meant to be moved should not).
    """
    from diffquant import __version__
    from diffquant.components import read_components, resolve_targets
    from diffquant.pipeline import default_settings, load_info

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DiffquantError(f"Output folder {str(out_dir)!r} exists and is not empty.",
                             hint="choose a new folder, or delete this one first")
    info = load_info(pipe)
    targets = resolve_targets(info.recipe, read_components(info.model_dir))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        shutil.copy2(info.model_dir / "model_index.json", tmp / "model_index.json")
        formats = {}
        for name, component in pipe.components.items():
            if component is None:
                continue
            spec = targets.get(name)
            source = info.model_dir / name
            if spec is None and link_unquantized and source.is_dir():
                os.symlink(source.resolve(), tmp / name, target_is_directory=True)
                formats[name] = "native"
                continue
            formats[name] = _save_component(component, spec, info, name, tmp / name)
        settings = default_settings(info.model_ref)
        defaults = info.model_dir / "diffquant.json"
        if defaults.is_file():
            shutil.copy2(defaults, tmp / "diffquant.json")
        elif settings.steps is not None:
            (tmp / "diffquant.json").write_text(json.dumps(
                {"steps": settings.steps, "height": settings.height, "width": settings.width,
                 "guidance_scale": settings.guidance_scale}, indent=2))
        from diffquant.versions import library_versions

        (tmp / MARKER).write_text(json.dumps({
            "recipe": info.recipe.to_dict(), "recipe_name": info.recipe.name, "recipe_hash": info.recipe.hash,
            "source_model": info.model_ref, "device": info.device, "diffquant_version": __version__,
            "versions": library_versions(), "components": formats}, indent=2))
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _save_component(component: Any, spec: QuantSpec | None, info: Any, name: str, folder: Path) -> str:
    import torch

    if not isinstance(component, torch.nn.Module):
        component.save_pretrained(folder)  # tokenizer, scheduler
        return "native"
    if spec is None or spec.backend == "torchao" or (spec.backend == "bnb" and info.device != "cpu"):
        component.save_pretrained(folder, safe_serialization=spec is None or spec.backend != "torchao")
        return "native"
    folder.mkdir(parents=True)
    component.save_config(folder) if hasattr(component, "save_config") else component.config.save_pretrained(folder)
    meta: dict[str, Any] = {"spec": spec.to_dict(), "class_name": type(component).__name__}
    if spec.backend == "gguf":
        source = Path(component._diffquant_gguf_path)
        shutil.copy2(source, folder / "model.gguf")
        meta["format"] = "gguf-file"
    else:
        from safetensors.torch import save_file

        state = _untied_state(component)
        if spec.backend == "quanto":
            from optimum.quanto import quantization_map

            meta["quantization_map"] = quantization_map(component)
        save_file(state, str(folder / WEIGHTS))
        meta["format"] = {"quanto": "quanto-requantize", "bnb": "bnb-prequantized",
                          "layerwise": "layerwise-fp8"}[spec.backend]
    (folder / COMPONENT_MARKER).write_text(json.dumps(meta, indent=2))
    return str(meta["format"])


def _untied_state(component: Any) -> dict[str, Any]:
    """The state dict with tied tensors stored once (models re-tie them when built from config)."""
    state, seen = {}, set()
    for key, value in component.state_dict().items():
        value = value.detach().contiguous().cpu()
        ptr = (value.data_ptr(), value.numel(), value.dtype) if value.numel() else None
        if ptr is not None and ptr in seen:
            continue
        if ptr is not None:
            seen.add(ptr)
        state[key] = value
    return state


def is_quantized_export(model_dir: Path) -> bool:
    return (Path(model_dir) / MARKER).is_file()


def load_saved_components(model_dir: Path, dtype: Any, device: str) -> dict[str, Any]:
    """Load the components that diffusers cannot load by itself from a ``save_quantized`` folder."""
    loaded = {}
    for sub in sorted(Path(model_dir).iterdir()):
        marker = sub / COMPONENT_MARKER
        if marker.is_file():
            loaded[sub.name] = _load_component(sub, json.loads(marker.read_text()), dtype, device)
    return loaded


def _empty_model(folder: Path, class_name: str, dtype: Any) -> Any:
    import diffusers
    import transformers

    if hasattr(diffusers, class_name):
        cls = getattr(diffusers, class_name)
        return cls.from_config(cls.load_config(folder)).to(dtype).eval()
    cls = getattr(transformers, class_name)
    config = transformers.AutoConfig.from_pretrained(folder)
    return cls._from_config(config, torch_dtype=dtype).eval()  # eval: no dropout, as from_pretrained


def _restore_saved_dtypes(model: Any, state: dict[str, Any]) -> None:
    """Give plain tensors the dtype they were saved with (quantizers keep some scales in fp32)."""
    import torch

    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    for key, tensor in tensors.items():
        saved = state.get(key)
        if saved is None or type(tensor) not in (torch.Tensor, torch.nn.Parameter):
            continue
        if tensor.dtype != saved.dtype:
            tensor.data = tensor.data.to(saved.dtype)


def _load_component(folder: Path, meta: dict[str, Any], dtype: Any, device: str) -> Any:
    import torch
    from safetensors.torch import load_file

    from diffquant.recipes.validate import recipe_from_dict

    spec = recipe_from_dict({"quant": [meta["spec"]]}).quant[0]
    fmt = meta["format"]
    if fmt == "gguf-file":
        import diffusers

        from diffquant.backends.gguf import with_options

        cls = getattr(diffusers, meta["class_name"])
        model = cls.from_single_file(str(folder / "model.gguf"), config=str(folder), torch_dtype=dtype,
                                     quantization_config=diffusers.GGUFQuantizationConfig(compute_dtype=dtype))
        model._diffquant_gguf_path = str(folder / "model.gguf")
        return with_options(model, spec)
    state = load_file(str(folder / WEIGHTS))
    model = _empty_model(folder, meta["class_name"], dtype)
    if fmt == "quanto-requantize":
        from optimum.quanto import requantize

        requantize(model, state, meta["quantization_map"], device=torch.device(device))
        _restore_saved_dtypes(model, state)
        return model
    if fmt == "bnb-prequantized":
        from diffquant.backends.bnb import load_prequantized

        load_prequantized(model, state, spec, dtype, device)
        _restore_saved_dtypes(model, state)
        return model
    if fmt == "layerwise-fp8":
        model.load_state_dict(state)  # float8 values upcast exactly into the compute dtype
        from diffquant.backends.base import ComponentContext
        from diffquant.backends.layerwise import apply_casting

        apply_casting(model, spec, ComponentContext(folder.name, "diffusers" if hasattr(model, "enable_layerwise_casting")
                                                    else "transformers", meta["class_name"], str(folder),
                                                    dtype, device, True))
        return model
    raise DiffquantError(f"Unknown saved component format {fmt!r} in {folder}.",
                         hint="re-export the model with this version of diffquant")
