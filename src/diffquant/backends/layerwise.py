"""FP8 layerwise casting: weights stored in float8, upcast per layer just before it runs
(diffusers' hooks; works for transformers models too through ``apply_layerwise_casting``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffquant.backends.base import (
    ComponentContext,
    MemoryTraits,
    PlainLoad,
    SaveTarget,
    load_plain,
    no_cached_file,
    no_compile_issue,
    no_disk_offload_issue,
    nothing_after_load,
    nothing_before_load,
    same_layer,
)
from diffquant.errors import DiffquantError
from diffquant.recipes.model import QuantSpec

name = "layerwise"
packages: tuple[str, ...] = ()  # torch and diffusers only, recorded anyway
cache_quantized = False  # a cheap cast
memory = MemoryTraits(reads_source=True)
formats = {"layerwise-fp8": "safetensors (float8)"}
disk_offload_breaks = no_disk_offload_issue
compile_breaks = no_compile_issue
cached_file = no_cached_file
before_load = nothing_before_load
after_load = nothing_after_load


def notes(spec: QuantSpec, device: str) -> list[str]:
    if device != "cpu":
        return []
    from diffquant.file_pages import MMAP_THRESHOLD, on_glibc

    if not on_glibc():
        return [("this C library is not glibc, so diffquant cannot pin its mmap threshold: every call "
                 "re-allocates the cast weights, and the freed copies may stay resident (the generation "
                 "peak can then reach bf16's)")]
    return [(f"glibc's mmap threshold is pinned at {MMAP_THRESHOLD >> 20} MiB in this process: every call "
            "re-allocates the cast weights, and with glibc's sliding threshold the freed copies stayed "
            "resident in the heap (a plain script gets the same with "
            f"MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD})")]


def why_not_here(spec: QuantSpec, device: str) -> str | None:
    import torch

    if not hasattr(torch, "float8_e4m3fn"):
        return "this torch build has no float8 dtypes; upgrade torch to >= 2.1"
    return None


def load_config(spec: QuantSpec, ctx: ComponentContext) -> Any | None:
    return None


def load_component(spec: QuantSpec, ctx: ComponentContext, cache_dir: Any) -> Any:
    return apply_casting(load_plain(ctx), spec, ctx)


def apply_casting(module: Any, spec: QuantSpec, ctx: ComponentContext) -> Any:
    import torch
    from diffusers.hooks import apply_layerwise_casting

    storage = torch.float8_e4m3fn if spec.qtype == "e4m3" else torch.float8_e5m2
    if ctx.device == "cpu":  # every call re-allocates the weights: keep their copies out of the heap
        from diffquant.file_pages import fix_mmap_threshold

        fix_mmap_threshold()
    # "auto" skips norms, embeddings and positional layers, as enable_layerwise_casting does.
    skip: str | tuple[str, ...] = tuple(spec.skip_modules) if spec.skip_modules else "auto"
    if skip == "auto" and ctx.library == "diffusers":
        module.enable_layerwise_casting(storage_dtype=storage, compute_dtype=ctx.dtype)
    else:
        if skip == "auto":
            from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

            # transformers marks layers that must not run in low precision (T5's "wo" casts its input
            # to its weight's dtype, which would be float8).
            keep = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
            skip = tuple(DEFAULT_SKIP_MODULES_PATTERN) + keep
        apply_layerwise_casting(module, storage_dtype=storage, compute_dtype=ctx.dtype,
                                skip_modules_pattern=skip)
    return module


def save(component: Any, spec: QuantSpec, target: SaveTarget) -> str:
    """The float8 weights under the library's standard name; reloading casts them again."""
    from diffquant.export.files import save_config, save_state, write_marker

    target.folder.mkdir(parents=True)
    save_config(component, target.folder)
    return write_marker(component, spec, target.folder, "layerwise-fp8", save_state(component, target.folder))


def plain_load(component: Any) -> PlainLoad | None:
    """``from_pretrained`` upcasts the float8 values exactly; layerwise casting casts them back, so
    the weights are the exported ones."""
    c = component
    how = f"{c.library} from_pretrained, then layerwise casting to float8"
    if c.format != "layerwise-fp8" or c.spec is None:
        return None
    storage = "torch.float8_e4m3fn" if c.spec.get("type") == "e4m3" else "torch.float8_e5m2"
    skip = tuple(c.spec.get("skip_modules") or ())
    if not skip and c.library == "diffusers":
        return PlainLoad(True, True, how, after=(
            f"pipe.{c.name}.enable_layerwise_casting(storage_dtype={storage}, compute_dtype=dtype)",))
    imports = ["from diffusers.hooks import apply_layerwise_casting"]
    if skip:
        pattern = repr(skip)
    else:
        imports.append("from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN")
        pattern = f"tuple(DEFAULT_SKIP_MODULES_PATTERN) + tuple(pipe.{c.name}._keep_in_fp32_modules or ())"
    return PlainLoad(True, True, how, imports=tuple(imports), after=(
        f"apply_layerwise_casting(pipe.{c.name}, storage_dtype={storage}, compute_dtype=dtype,",
        f"                        skip_modules_pattern={pattern})"))


def load_saved(folder: Path, meta: dict[str, Any], spec: QuantSpec, dtype: Any, device: str) -> Any:
    from diffquant.export.files import empty_model, load_state

    if meta["format"] != "layerwise-fp8":
        raise DiffquantError(f"Unknown saved layerwise format {meta['format']!r} in {folder}.",
                             hint="re-export the model with this version of diffquant")
    state = load_state(folder, meta)
    model = empty_model(folder, meta["class_name"], dtype)
    model.load_state_dict(state)  # float8 values upcast exactly into the compute dtype
    library = "diffusers" if hasattr(model, "enable_layerwise_casting") else "transformers"
    return apply_casting(model, spec, ComponentContext(folder.name, library, meta["class_name"], str(folder),
                                                       dtype, device, True))


# --- One module at a time (diffquant.sensitivity asks these) ---------------------------------

def _patterns(spec: QuantSpec, model: Any) -> tuple[str, ...]:
    """The skip patterns loading applies (``apply_casting``): the user's, else diffusers' "auto" set."""
    if spec.skip_modules:
        return tuple(spec.skip_modules)
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    extra = list(getattr(model, "_keep_in_fp32_modules", None) or [])
    extra += list(getattr(model, "_skip_layerwise_casting_patterns", None) or [])
    return tuple(dict.fromkeys((*DEFAULT_SKIP_MODULES_PATTERN, *extra)))


def quantize_linear(linear: Any, spec: QuantSpec, name: str, model: Any) -> Any | None:
    import copy

    import torch
    from diffusers.hooks import apply_layerwise_casting

    if keeps_precise(spec, name, model):
        return None
    layer = copy.deepcopy(linear)
    storage = torch.float8_e4m3fn if spec.qtype == "e4m3" else torch.float8_e5m2
    apply_layerwise_casting(layer, storage_dtype=storage, compute_dtype=linear.weight.dtype,
                            skip_modules_pattern=None)
    return layer


def keeps_precise(spec: QuantSpec, name: str, model: Any) -> bool:
    import re

    return any(re.search(p, name) for p in _patterns(spec, model))


def keep_precise(spec: QuantSpec, keep: dict[str, str | None], model: Any) -> QuantSpec:
    """The skip list written out in full (a user list replaces the "auto" set), plus one anchored
    regular expression per kept module."""
    import re
    from dataclasses import replace

    anchored = {f"^{re.escape(n)}$" for n in keep}
    return replace(spec, skip_modules=tuple(dict.fromkeys((*_patterns(spec, model), *sorted(anchored)))))


def upgrade_type(spec: QuantSpec) -> str | None:
    return None
def stored_bytes(spec: QuantSpec, model: Any, ctx: ComponentContext) -> int:
    """Bytes this component holds once loaded with ``spec`` (``model``: the plain meta-device model).

    The same walk as diffusers' ``_apply_layerwise_casting``: a module whose path matches a skip
    pattern (``re.search``) is left whole; a Linear/Conv/Embedding layer has all its floating-point
    tensors (bias included) stored in float8; other modules are searched further. Patterns are
    :func:`apply_casting`'s: diffusers' defaults plus the model's ``_keep_in_fp32_modules`` and
    ``_skip_layerwise_casting_patterns`` ("norm" among them, so AdaLN ``norm1.linear`` stays)."""
    import re

    from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    from diffquant.backends.base import count_stored_bytes

    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    if spec.skip_modules:
        patterns: tuple[str, ...] = tuple(spec.skip_modules)
    elif ctx.library == "diffusers":  # enable_layerwise_casting's own list
        patterns = (DEFAULT_SKIP_MODULES_PATTERN + keep
                    + tuple(getattr(model, "_skip_layerwise_casting_patterns", None) or ()))
    else:
        patterns = tuple(DEFAULT_SKIP_MODULES_PATTERN) + keep

    def converted(name: str, module: Any) -> int | None:
        if any(re.search(p, name) for p in patterns):
            return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
        if not isinstance(module, _GO_LC_SUPPORTED_PYTORCH_LAYERS):
            return None
        return sum(t.numel() * (1 if t.is_floating_point() else t.element_size())
                   for t in [*module.parameters(), *module.buffers()])

    return count_stored_bytes(model, converted)


evaluation_copy = same_layer
