"""GGUF: the denoiser loads from a .gguf file through ``from_single_file`` with
``GGUFQuantizationConfig``; weights stay in their block format and are dequantized per layer.

Without ``path=``, diffquant writes the file itself from the model's weights (our GGUF writer,
K-quants included) and caches it keyed by model, type, options and writer version.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from diffquant.backends.base import (
    ComponentContext,
    MemoryTraits,
    PlainLoad,
    SaveTarget,
    no_compile_issue,
    no_notes,
    nothing_after_load,
    nothing_before_load,
    package_missing,
)
from diffquant.errors import DiffquantError
from diffquant.recipes.model import QuantSpec

name = "gguf"
_log = logging.getLogger(__name__)
packages = ("gguf",)
cache_quantized = False  # the written GGUF file is its own cache (``cached_file``)
# The loaded weights are the .gguf file's blocks: memory-mapped while they are copied out, and each
# layer's weight dequantized to the compute dtype as it runs (measured on zoo:flux-dev-slice).
memory = MemoryTraits(own_file=True, dequantizes_layer=True)
GGUF_FILE = "model.gguf"  # a component's file in an export
formats = {"gguf-file": "GGUF"}
notes = no_notes
compile_breaks = no_compile_issue
before_load = nothing_before_load
after_load = nothing_after_load


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


def disk_offload_breaks(spec: QuantSpec) -> str | None:
    # Measured with diffusers 0.42.1 (tests/test_backends.py keeps this honest).
    return "produces NaN latents (the packed GGUF blocks are not restored)."


def load_config(spec: QuantSpec, ctx: ComponentContext) -> Any | None:
    return None


def cached_file(spec: QuantSpec, ctx: ComponentContext, cache_dir: Path | None) -> bool | None:
    """Whether the GGUF file diffquant writes for this spec is cached already (None with ``path=``)."""
    return None if spec.option("path") else gguf_cache_path(spec, ctx, cache_dir).is_file()


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
    return with_options(model, spec, ctx.device)


def with_options(model: Any, spec: QuantSpec, device: str) -> Any:
    """Apply the spec's execution options to a model loaded from a GGUF file (also on reload).

    ``cpu_kernel``: True runs diffquant's CPU kernel (checked up front by ``why_not_here``), False
    keeps diffusers' path, left out runs the kernel where it can (``lowbit.on_by_default``)."""
    from diffquant.lowbit import on_by_default
    from diffquant.lowbit.linear import use_cpu_kernel

    wanted = spec.option("cpu_kernel")
    if wanted:
        use_cpu_kernel(model)
    elif wanted is None and on_by_default(spec.qtype, device):
        try:
            use_cpu_kernel(model)
        except DiffquantError as err:  # not asked for: a failed build falls back to diffusers' path
            _log.warning("gguf-%s: %s Using diffusers' GGUF dequantization (cpu_kernel=false silences this).",
                         spec.qtype, err)
    from diffquant.backends.gguf_chunked import use_chunked_dequant

    use_chunked_dequant(model)  # layers the kernel took are not GGUFLinear any more
    return model


def save(component: Any, spec: QuantSpec, target: SaveTarget) -> str:
    """The component's config and the very .gguf file it was loaded from."""
    import shutil

    from diffquant.export.files import write_marker

    target.folder.mkdir(parents=True)
    component.save_config(target.folder)
    shutil.copy2(Path(component._diffquant_gguf_path), target.folder / GGUF_FILE)
    return write_marker(component, spec, target.folder, "gguf-file", GGUF_FILE)


def load_saved(folder: Path, meta: dict[str, Any], spec: QuantSpec, dtype: Any, device: str) -> Any:
    import diffusers

    if meta["format"] != "gguf-file":
        raise DiffquantError(f"Unknown saved gguf format {meta['format']!r} in {folder}.",
                             hint="re-export the model with this version of diffquant")
    cls = getattr(diffusers, meta["class_name"])
    path = folder / meta.get("file", GGUF_FILE)
    model = cls.from_single_file(str(path), config=str(folder), torch_dtype=dtype,
                                 quantization_config=diffusers.GGUFQuantizationConfig(compute_dtype=dtype))
    model._diffquant_gguf_path = str(path)  # a re-export copies the very file that was loaded
    return with_options(model, spec, device)  # e.g. cpu_kernel: the compiled dequantization on CPU


def plain_load(component: Any) -> PlainLoad | None:
    c = component
    if c.format not in formats:
        return None
    return PlainLoad(True, True, "diffusers from_single_file(..., config=folder, GGUFQuantizationConfig); on CPU "
                     "diffusers dequantizes in float16 while diffquant's default there (its kernel, unless "
                     "cpu_kernel=false) follows ggml's float32: close, not bit-identical",
                     imports=(f"from diffusers import {c.class_name}, GGUFQuantizationConfig",),
                     before=(f"{c.name} = {c.class_name}.from_single_file(",
                             f'    f"{{folder}}/{c.name}/{GGUF_FILE}", config=f"{{folder}}/{c.name}",',
                             "    quantization_config=GGUFQuantizationConfig(compute_dtype=dtype), torch_dtype=dtype)"))


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


# --- One module at a time (diffquant.sensitivity asks these) ---------------------------------

# One step up in precision, as the community's _M mixes bump a layer (ComfyUI-GGUF, llama.cpp).
NEXT_TYPE = {"q2_k": "q3_k", "q3_k": "q4_k", "q4_k": "q5_k", "q5_k": "q6_k", "q6_k": "q8_0",
             "q4_0": "q5_0", "q4_1": "q5_1", "q5_0": "q8_0", "q5_1": "q8_0", "q8_0": "bf16",
             # a named mix moves up from its base type
             "q2_k_m": "q3_k", "q3_k_s": "q4_k", "q3_k_m": "q4_k", "q3_k_l": "q4_k", "q4_k_s": "q5_k",
             "q4_k_m": "q5_k", "q5_k_s": "q6_k", "q5_k_m": "q6_k"}


def _policy(spec: QuantSpec) -> Any:
    from diffquant.gguf_writer.policy import TypePolicy

    keep = spec.option("keep")
    return TypePolicy(spec.qtype.upper(), str(keep).replace("|", ",") if keep else None)


def type_for(spec: QuantSpec, name: str, shape: tuple[int, ...]) -> str:
    """The GGUF type the writer gives the weight of module ``name`` (F32/F16/BF16 = kept)."""
    return _policy(spec).choose(f"{name}.weight", shape, "BF16").qtype


def quantize_linear(linear: Any, spec: QuantSpec, name: str, model: Any) -> Any | None:
    """A diffusers ``GGUFLinear`` holding this weight in the type the writer would choose, as the
    loaded model would hold it; None when the writer keeps it in a float type."""
    import torch
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter
    from gguf import GGMLQuantizationType

    from diffquant.gguf_writer.quantize import FLOAT_TYPES, quantize_tensor

    qtype = type_for(spec, name, tuple(linear.weight.shape))
    if qtype in FLOAT_TYPES:
        return None
    data = torch.from_numpy(quantize_tensor(linear.weight.detach().cpu(), qtype, threads=1))
    layer = GGUFLinear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                       compute_dtype=linear.weight.dtype)
    layer.weight = GGUFParameter(data.to(linear.weight.device), quant_type=GGMLQuantizationType[qtype])
    if linear.bias is not None:
        layer.bias = torch.nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    return layer


def evaluation_copy(layer: Any) -> Any:
    """A plain ``Linear`` holding the dequantized weight: diffusers' ``GGUFLinear`` dequantizes its
    weight on every CPU call (its whole CPU forward: dequantize, cast to the compute dtype,
    ``F.linear``), so this computes the same thing bit for bit, dequantizing once. On CUDA (GGUF's
    fused kernel) and for any other module, the layer itself."""
    import torch
    from diffusers.quantizers.gguf.utils import GGUFLinear, dequantize_gguf_tensor

    if type(layer) is not GGUFLinear or layer.weight.is_cuda:  # not subclasses: their kernels differ
        return layer
    dtype = layer.compute_dtype or torch.get_default_dtype()
    plain = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, dtype=dtype,
                            device=layer.weight.device)
    with torch.no_grad():
        plain.weight.copy_(dequantize_gguf_tensor(layer.weight).to(dtype))
        if layer.bias is not None:
            plain.bias.copy_(layer.bias.to(dtype))
    return plain.requires_grad_(False)


def keeps_precise(spec: QuantSpec, name: str, model: Any) -> bool:
    from diffquant.gguf_writer.quantize import FLOAT_TYPES

    module = model.get_submodule(name)
    return type_for(spec, name, tuple(module.weight.shape)) in FLOAT_TYPES


def keep_precise(spec: QuantSpec, keep: dict[str, str | None], model: Any) -> QuantSpec:
    """``spec`` with ``keep=`` rules that give each named module its type (None: the source's
    precision). ``name.*`` is an anchored glob: it matches this module's tensors only."""
    from dataclasses import replace

    rules = [r for r in str(spec.option("keep") or "").split("|") if r]
    rules += [f"{n}.*" + (f"={t.upper()}" if t else "") for n, t in sorted(keep.items())]
    options = dict(spec.options)
    options["keep"] = "|".join(rules)
    return replace(spec, options=tuple(sorted(options.items())))


def upgrade_type(spec: QuantSpec) -> str | None:
    return NEXT_TYPE.get(spec.qtype)
def stored_bytes(spec: QuantSpec, model: Any, ctx: ComponentContext) -> int:
    """Bytes this component holds once loaded with ``spec`` (``model``: the plain meta-device model).

    Each weight gets the type our writer would give it (``gguf_writer.policy``: 1-D and tiny tensors
    F32, convolutions F32/F16, the default keep list in the source's half precision, row fallbacks).
    diffusers keeps quantized and BF16 tensors as raw GGUF blocks and loads F32/F16 ones as plain
    tensors in the model's dtype. With ``path=`` the file's own tensor types are read from its header.
    """
    from diffquant.backends.base import count_param_bytes
    from diffquant.gguf_writer.policy import TypePolicy
    from diffquant.gguf_writer.quantize import nbytes

    if not ctx.is_denoiser or ctx.library != "diffusers":
        raise DiffquantError(f"GGUF recipes quantize the denoiser only; {ctx.name!r} is a {ctx.library} "
                             f"{ctx.class_name}.", hint="use another backend for text encoders")
    file_types = _file_types(Path(str(spec.option("path")))) if spec.option("path") else None
    keep = spec.option("keep")
    policy = TypePolicy(spec.qtype.upper(), keep=str(keep).replace("|", ",") if keep else None)
    source = {"bfloat16": "BF16", "float16": "F16"}.get(str(ctx.dtype).removeprefix("torch."), "F32")

    def param_bytes(name: str, param: Any) -> int:
        shape = tuple(param.shape)
        qtype = (file_types or {}).get(name) or policy.choose(name, shape, source).qtype
        return param.numel() * param.element_size() if qtype in ("F32", "F16") else nbytes(qtype, shape)

    return count_param_bytes(model, param_bytes)


def _file_types(path: Path) -> dict[str, str]:
    """Tensor name -> GGUF type name, from a .gguf file's header (the data is not read)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {t.name: t.tensor_type.name for t in reader.tensors}
