"""The on-disk pieces every saved component shares, whatever its backend: standard weight file
names, the ``diffquant_component.json`` marker, configs, tied tensors. Backends' ``save`` and
``load_saved`` use these; this module knows no backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffquant.errors import DiffquantError

EXPORT_MARKER = "diffquant_quantized.json"  # at the top of an export: recipe, versions, formats, weight bytes
COMPONENT_MARKER = "diffquant_component.json"
LEGACY_WEIGHTS = "diffquant_weights.safetensors"  # exports written before the standard names


class PickleNeeded(DiffquantError):
    """The installed libraries can write this component only as a pickle."""


def weights_name(library: str) -> str:
    return "diffusion_pytorch_model.safetensors" if library == "diffusers" else "model.safetensors"


def library_of(component: Any) -> str:
    return "transformers" if type(component).__module__.startswith("transformers") else "diffusers"


def write_marker(component: Any, spec: Any, folder: Path, fmt: str, file: str) -> str:
    """Record how diffquant rebuilds this component (its spec, class, library, format and file)."""
    meta = {"spec": spec.to_dict(), "class_name": type(component).__name__, "library": library_of(component),
            "format": fmt, "file": file}
    (folder / COMPONENT_MARKER).write_text(json.dumps(meta, indent=2))
    return fmt


def save_config(component: Any, folder: Path, quantization_config: dict[str, Any] | None = None) -> None:
    if hasattr(component, "save_config"):
        component.save_config(folder)
    else:
        component.config.save_pretrained(folder)
    if quantization_config is not None:  # so that the library's own loader reads the packed weights
        path = folder / "config.json"
        config = json.loads(path.read_text())
        config["quantization_config"] = quantization_config
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_state(component: Any, folder: Path) -> str:
    """Write the component's (untied) state dict under the library's standard name; returns the name."""
    from safetensors.torch import save_file

    name = weights_name(library_of(component))
    save_file(untied_state(component), str(folder / name), metadata={"format": "pt"})
    return name


def untied_state(component: Any) -> dict[str, Any]:
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


def load_state(folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(folder / meta.get("file", LEGACY_WEIGHTS)))


def empty_model(folder: Path, class_name: str, dtype: Any) -> Any:
    import diffusers
    import transformers

    if hasattr(diffusers, class_name):
        cls = getattr(diffusers, class_name)
        config = {k: v for k, v in cls.load_config(folder).items() if k != "quantization_config"}
        return cls.from_config(config).to(dtype).eval()
    cls = getattr(transformers, class_name)
    config = transformers.AutoConfig.from_pretrained(folder)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # diffquant fills the layers itself
    return cls._from_config(config, torch_dtype=dtype).eval()  # eval: no dropout, as from_pretrained


def restore_saved_dtypes(model: Any, state: dict[str, Any]) -> None:
    """Give plain tensors the dtype they were saved with (quantizers keep some scales in fp32)."""
    import torch

    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    for key, tensor in tensors.items():
        saved = state.get(key)
        if saved is None or type(tensor) not in (torch.Tensor, torch.nn.Parameter):
            continue
        if tensor.dtype != saved.dtype:
            tensor.data = tensor.data.to(saved.dtype)
