"""One quantized component on disk, in the layout its library reads, as safetensors.

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

import json
import shutil
from pathlib import Path
from typing import Any

from diffquant.errors import DiffquantError
from diffquant.recipes.model import QuantSpec

COMPONENT_MARKER = "diffquant_component.json"
LEGACY_WEIGHTS = "diffquant_weights.safetensors"  # exports written before the standard names
QUANTO_QMAP = "quanto_qmap.json"  # optimum-quanto's own file name (QuantizedDiffusersModel)
GGUF_FILE = "model.gguf"


def weights_name(library: str) -> str:
    return "diffusion_pytorch_model.safetensors" if library == "diffusers" else "model.safetensors"


def library_of(component: Any) -> str:
    return "transformers" if type(component).__module__.startswith("transformers") else "diffusers"


class PickleNeeded(DiffquantError):
    """The installed libraries can write this component only as a pickle."""


def save_component(component: Any, spec: QuantSpec | None, device: str, dtype: Any, folder: Path, *,
                   allow_pickle: bool = False) -> str:
    """Write one pipeline component into ``folder``; returns its format name. ``dtype`` is the
    recipe's compute dtype (recorded in a bitsandbytes config)."""
    import torch

    if not isinstance(component, torch.nn.Module):
        component.save_pretrained(folder)  # tokenizer, scheduler
        return "native"
    if spec is None or spec.backend == "sdnq" or (spec.backend == "bnb" and device != "cpu"):
        component.save_pretrained(folder, safe_serialization=True)
        return "native"
    if spec.backend == "torchao":
        return _save_torchao(component, folder, allow_pickle)
    folder.mkdir(parents=True)
    library = library_of(component)
    meta: dict[str, Any] = {"spec": spec.to_dict(), "class_name": type(component).__name__, "library": library}
    if spec.backend == "gguf":
        component.save_config(folder)
        shutil.copy2(Path(component._diffquant_gguf_path), folder / GGUF_FILE)
        meta["format"], meta["file"] = "gguf-file", GGUF_FILE
    else:
        from safetensors.torch import save_file

        _save_config(component, folder, _bnb_config(spec, component, dtype) if spec.backend == "bnb" else None)
        if spec.backend == "quanto":
            from optimum.quanto import quantization_map

            (folder / QUANTO_QMAP).write_text(json.dumps(quantization_map(component), indent=2))
        meta["file"] = weights_name(library)
        save_file(untied_state(component), str(folder / meta["file"]), metadata={"format": "pt"})
        meta["format"] = {"quanto": "quanto-requantize", "bnb": "bnb-prequantized",
                          "layerwise": "layerwise-fp8"}[spec.backend]
    (folder / COMPONENT_MARKER).write_text(json.dumps(meta, indent=2))
    return str(meta["format"])


def _save_torchao(component: Any, folder: Path, allow_pickle: bool) -> str:
    """torchao >= 0.16 flattens its tensor subclasses into safetensors (diffusers >= 0.36 and
    transformers >= 4.56 read them back); older versions or unlisted tensor types need pickle."""
    try:
        component.save_pretrained(folder, safe_serialization=True)
    except Exception as exc:  # any failure here means "no safetensors for this type"
        if folder.exists():
            shutil.rmtree(folder)
        if not allow_pickle:
            raise PickleNeeded(
                f"torchao could not write {type(component).__name__} as safetensors ({type(exc).__name__}: "
                f"{str(exc)[:200]}); only a pickle (.bin) is possible with these library versions.",
                hint="upgrade torchao (>= 0.16) and diffusers, choose another recipe, or pass --allow-pickle "
                     "(allow_pickle=True) to write a pickle that the card names and loaders refuse by default"
            ) from exc
        component.save_pretrained(folder, safe_serialization=False)
        return "native-pickle"
    return "native"


def _save_config(component: Any, folder: Path, quantization_config: dict[str, Any] | None) -> None:
    if hasattr(component, "save_config"):
        component.save_config(folder)
    else:
        component.config.save_pretrained(folder)
    if quantization_config is not None:  # so that the library's own bnb loader reads the packed weights
        path = folder / "config.json"
        config = json.loads(path.read_text())
        config["quantization_config"] = quantization_config
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _bnb_config(spec: QuantSpec, component: Any, dtype: Any) -> dict[str, Any]:
    """The BitsAndBytesConfig diffusers/transformers would have written on a GPU for this spec."""
    import diffusers
    import transformers

    from diffquant.backends.base import ComponentContext
    from diffquant.backends.bnb import load_config

    library = library_of(component)
    ctx = ComponentContext("", library, type(component).__name__, "", dtype, "cuda", False)
    config = load_config(spec, ctx)
    assert isinstance(config, (diffusers.BitsAndBytesConfig, transformers.BitsAndBytesConfig))
    return dict(config.to_dict())


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


def load_component(folder: Path, meta: dict[str, Any], dtype: Any, device: str) -> Any:
    """Rebuild a component written by :func:`save_component` with a ``diffquant_component.json``."""
    import torch
    from safetensors.torch import load_file

    from diffquant.recipes.validate import recipe_from_dict

    spec = recipe_from_dict({"quant": [meta["spec"]]}).quant[0]
    fmt = meta["format"]
    if fmt == "gguf-file":
        import diffusers

        from diffquant.backends.gguf import with_options

        cls = getattr(diffusers, meta["class_name"])
        path = folder / meta.get("file", GGUF_FILE)
        model = cls.from_single_file(str(path), config=str(folder), torch_dtype=dtype,
                                     quantization_config=diffusers.GGUFQuantizationConfig(compute_dtype=dtype))
        model._diffquant_gguf_path = str(path)  # a re-export copies the very file that was loaded
        return with_options(model, spec, device)  # e.g. cpu_kernel: the compiled dequantization on CPU
    state = load_file(str(folder / meta.get("file", LEGACY_WEIGHTS)))
    model = _empty_model(folder, meta["class_name"], dtype)
    if fmt == "quanto-requantize":
        from optimum.quanto import requantize

        qmap = meta.get("quantization_map") or json.loads((folder / QUANTO_QMAP).read_text())
        requantize(model, state, qmap, device=torch.device(device))
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

        library = "diffusers" if hasattr(model, "enable_layerwise_casting") else "transformers"
        apply_casting(model, spec, ComponentContext(folder.name, library, meta["class_name"], str(folder),
                                                    dtype, device, True))
        return model
    raise DiffquantError(f"Unknown saved component format {fmt!r} in {folder}.",
                         hint="re-export the model with this version of diffquant")


def _empty_model(folder: Path, class_name: str, dtype: Any) -> Any:
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
