"""GGUF: the denoiser loads from a .gguf file through ``from_single_file`` with
``GGUFQuantizationConfig``; weights stay in their block format and are dequantized per layer.

Without ``path=``, diffquant writes the file itself from the model's weights (our GGUF writer,
K-quants included) and caches it keyed by model, type, options and writer version.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from diffquant.backends.base import ComponentContext, package_missing
from diffquant.errors import DiffquantError
from diffquant.recipes.model import QuantSpec

name = "gguf"


def why_not_here(spec: QuantSpec, device: str) -> str | None:
    missing = package_missing("gguf")
    if missing:
        return missing
    path = spec.option("path")
    if path and not Path(str(path)).is_file():
        return f"GGUF file {path!r} does not exist; give an existing .gguf path or drop path= to write one"
    if spec.option("cpu_kernel"):
        from diffquant.lowbit import why_not_here as kernel_why_not

        return kernel_why_not(spec.qtype, device)
    return None


def load_config(spec: QuantSpec, ctx: ComponentContext) -> Any | None:
    return None


def load_component(spec: QuantSpec, ctx: ComponentContext, cache_dir: Path | None) -> Any:
    import diffusers

    if not ctx.is_denoiser or ctx.library != "diffusers":
        raise DiffquantError(
            f"GGUF recipes quantize the denoiser only (a diffusers model loaded with from_single_file); "
            f"{ctx.name!r} is a {ctx.library} {ctx.class_name}.",
            hint="drop the @component target, or use another backend for text encoders "
                 "(e.g. gguf-q4_k+quanto-int8@text_encoder_2)")
    path = Path(str(spec.option("path"))) if spec.option("path") else gguf_file_for(spec, ctx, cache_dir)
    cls = getattr(diffusers, ctx.class_name)
    model = cls.from_single_file(
        str(path),
        quantization_config=diffusers.GGUFQuantizationConfig(compute_dtype=ctx.dtype),
        config=ctx.model_dir, subfolder=ctx.name, torch_dtype=ctx.dtype,
    )
    model._diffquant_gguf_path = str(path)  # so an export copies the very file that was loaded
    return with_options(model, spec)


def with_options(model: Any, spec: QuantSpec) -> Any:
    """Apply the spec's execution options to a model loaded from a GGUF file (also on reload)."""
    if spec.option("cpu_kernel"):
        from diffquant.lowbit.linear import use_cpu_kernel

        use_cpu_kernel(model)
    return model


def gguf_cache_path(spec: QuantSpec, ctx: ComponentContext, cache_dir: Path | None) -> Path:
    """Where the GGUF file for this component and spec is (or will be) cached."""
    from diffquant.gguf_writer import WRITER_VERSION

    key = json.dumps({"model": str(Path(ctx.model_dir).resolve()), "component": ctx.name,
                      "type": spec.qtype, "keep": spec.option("keep"), "layout": spec.option("layout", "diffusers"),
                      "writer": WRITER_VERSION, "weights_mtime": _weights_mtime(Path(ctx.model_dir) / ctx.name)},
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir else _default_cache()
    return root / "gguf" / f"{ctx.name}-{spec.qtype.upper()}-{digest}.gguf"


def gguf_file_for(spec: QuantSpec, ctx: ComponentContext, cache_dir: Path | None) -> Path:
    """Write (once) and return a GGUF file of this component for this spec."""
    from diffquant.gguf_writer import export_gguf

    out = gguf_cache_path(spec, ctx, cache_dir)
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        keep = spec.option("keep")
        export_gguf(Path(ctx.model_dir), out, spec.qtype.upper(), component=ctx.name,
                    layout=str(spec.option("layout", "diffusers")),
                    keep=str(keep).replace("|", ",") if keep else None)
    return out


def _weights_mtime(folder: Path) -> float:
    return max((p.stat().st_mtime for p in folder.glob("*.safetensors")), default=0.0)


def _default_cache() -> Path:
    from diffquant.zoo import cache_root

    return cache_root().parent
