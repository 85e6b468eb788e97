"""One quantized component on disk, in the layout its library reads, as safetensors.

Each backend's module writes and rebuilds its own components (``save`` / ``load_saved``, its
``formats``); this module hands a component to its backend and reads the marker back:

| format | files | who else loads it |
|---|---|---|
| ``native`` (torchao, SDNQ, bnb on CUDA, unquantized) | the library's ``save_pretrained`` | diffusers / transformers |
| ``quanto-requantize`` | weights + ``config.json`` (QuantoConfig) + ``quanto_qmap.json`` | diffusers / transformers ``from_pretrained``, optimum-quanto's ``QuantizedDiffusersModel`` |
| ``bnb-prequantized`` (bnb on CPU) | bitsandbytes' own packed state dict + ``config.json`` (BitsAndBytesConfig) | transformers anywhere; diffusers on a GPU only |
| ``layerwise-fp8`` | float8 weights + ``config.json`` | ``from_pretrained`` then ``enable_layerwise_casting`` |
| ``gguf-file`` | ``model.gguf`` + ``config.json`` | ``from_single_file(..., config=folder)`` |

Weights go under the library's standard file name (``diffusion_pytorch_model.safetensors`` /
``model.safetensors``) so that ``from_pretrained`` finds them; ``diffquant_component.json`` tells
diffquant how to rebuild what the library cannot (bitsandbytes on CPU, fp8 casting hooks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffquant.export.files import (  # noqa: F401 - importable here, as before
    COMPONENT_MARKER,
    LEGACY_WEIGHTS,
    PickleNeeded,
    library_of,
    untied_state,
    weights_name,
)
from diffquant.recipes.model import QuantSpec


def save_component(component: Any, spec: QuantSpec | None, device: str, dtype: Any, folder: Path, *,
                   allow_pickle: bool = False) -> str:
    """Write one pipeline component into ``folder``; returns its format name. ``dtype`` is the
    recipe's compute dtype (recorded in a bitsandbytes config)."""
    import torch

    from diffquant.backends import get_backend
    from diffquant.backends.base import SaveTarget

    if not isinstance(component, torch.nn.Module):
        component.save_pretrained(folder)  # tokenizer, scheduler
        return "native"
    if spec is None:
        component.save_pretrained(folder, safe_serialization=True)
        return "native"
    target = SaveTarget(folder=Path(folder), device=device, dtype=dtype, allow_pickle=allow_pickle)
    return get_backend(spec.backend).save(component, spec, target)


def load_component(folder: Path, meta: dict[str, Any], dtype: Any, device: str) -> Any:
    """Rebuild a component written by :func:`save_component` with a ``diffquant_component.json``."""
    from diffquant.backends import get_backend
    from diffquant.recipes.model import recipe_from_dict

    spec = recipe_from_dict({"quant": [meta["spec"]]}).quant[0]
    return get_backend(spec.backend).load_saved(Path(folder), meta, spec, dtype, device)
