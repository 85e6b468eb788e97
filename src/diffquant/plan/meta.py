"""Every model component of a pipeline on the meta device, from its config files alone, with the
dtypes ``from_pretrained(torch_dtype=...)`` gives its tensors. Nothing is allocated for weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffquant.components import Component, is_module_component


def meta_model(folder: Path, comp: Component, dtype: Any) -> Any:
    """``comp`` instantiated on the meta device and cast as loading would cast it."""
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    sub = folder / comp.name
    with init_empty_weights(include_buffers=True):
        if comp.library == "diffusers":
            cls = getattr(diffusers, comp.class_name)
            model = cls.from_config(cls.load_config(sub))
        else:
            cls = getattr(transformers, comp.class_name)
            config = transformers.AutoConfig.from_pretrained(sub)
            model = cls(config)
    # Module._apply, not .to(): diffusers' .to() warns about float32 modules we handle next.
    model._apply(lambda t: t.to(dtype) if t.is_floating_point() else t)
    for name in _fp32_modules(model, comp.library, dtype):
        model.get_submodule(name)._apply(lambda t: t.to(_float32()) if t.is_floating_point() else t)
    return model.eval()


def meta_components(folder: Path, components: dict[str, Component], dtype: Any) -> dict[str, Any]:
    return {name: meta_model(folder, comp, dtype) for name, comp in components.items()
            if is_module_component(comp) and (folder / name / "config.json").is_file()}


def _float32() -> Any:
    import torch

    return torch.float32


def _fp32_modules(model: Any, library: str, dtype: Any) -> list[str]:
    """Modules loading keeps in float32: transformers' ``_keep_in_fp32_modules`` for float16 only,
    its ``_keep_in_fp32_modules_strict`` for float16 and bfloat16; diffusers' for any half dtype."""
    import torch

    if dtype == torch.float32:
        return []
    patterns = list(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    if library == "diffusers" or dtype == torch.float16:
        patterns += list(getattr(model, "_keep_in_fp32_modules", None) or ())
    if not patterns:
        return []
    return [name for name, _ in model.named_modules()
            if name and any(p in name.split(".") for p in patterns)]
