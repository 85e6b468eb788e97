"""bitsandbytes: 4-bit NF4/FP4 and LLM.int8().

On CUDA the component loads through diffusers'/transformers' ``BitsAndBytesConfig``. On CPU
diffusers refuses ("No GPU found") although bitsandbytes' own layers run there, so we load the
component in full precision and swap its ``nn.Linear`` layers for ``Linear4bit``/``Linear8bitLt``,
then give the 4-bit layers bitsandbytes' CPU kernel layout while loading (see ``pack_for_cpu``).
"""

from __future__ import annotations

import fnmatch
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
    nothing_after_load,
    nothing_before_load,
    package_missing,
    same_layer,
    save_native,
)
from diffquant.errors import DiffquantError
from diffquant.recipes.model import QuantSpec

name = "bnb"
packages = ("bitsandbytes",)
cache_quantized = True  # quantize-on-load is slow for big models
# Importing bitsandbytes adds ~40 MiB RSS on CPU; LLM.int8() runs each CPU layer through float32
# dequantized copies (fitted to CPU-FACTS: bnb-int8 peak 1.49x bf16 on zoo:flux-dev-slice).
memory = MemoryTraits(import_bytes=40 * 1024 * 1024, reads_source=True, float32_temporaries=True,
                      cpu_dequantized_copies={"int8": 12})
formats = {"bnb-prequantized": "safetensors (bitsandbytes packed)"}
cached_file = no_cached_file
compile_breaks = no_compile_issue
before_load = nothing_before_load
after_load = nothing_after_load


def why_not_here(spec: QuantSpec, device: str) -> str | None:
    return package_missing("bnb")


def notes(spec: QuantSpec, device: str) -> list[str]:
    return ["bnb on CPU: layers swapped by hand (diffusers' bnb loader needs a GPU)"] if device == "cpu" else []


def disk_offload_breaks(spec: QuantSpec) -> str | None:
    # Measured with diffusers 0.42.1 (tests/test_backends.py): 4-bit survives, int8 does not.
    return "produces NaN latents for int8 (the row scales are not restored)." if spec.qtype == "int8" else None


def _compute_dtype(spec: QuantSpec, ctx: ComponentContext) -> Any:
    import torch

    return getattr(torch, spec.option("compute_dtype")) if spec.option("compute_dtype") else ctx.dtype


def load_config(spec: QuantSpec, ctx: ComponentContext) -> Any | None:
    if ctx.device == "cpu":
        return None  # diffusers' bnb quantizer needs a GPU; swap layers by hand instead
    import diffusers
    import transformers

    cls = diffusers.BitsAndBytesConfig if ctx.library == "diffusers" else transformers.BitsAndBytesConfig
    skip = list(spec.skip_modules) or None
    if spec.qtype == "int8":
        return cls(load_in_8bit=True, llm_int8_skip_modules=skip)
    return cls(load_in_4bit=True, bnb_4bit_quant_type=spec.qtype,
               bnb_4bit_compute_dtype=_compute_dtype(spec, ctx),
               bnb_4bit_use_double_quant=bool(spec.option("double_quant", False)),
               llm_int8_skip_modules=skip)


def load_component(spec: QuantSpec, ctx: ComponentContext, cache_dir: Any) -> Any:
    module = load_plain(ctx)
    swap_linear_layers(module, spec, _compute_dtype(spec, ctx), ctx.device)
    if ctx.device == "cpu":
        pack_for_cpu(module)  # here, in the loader's arena, not in the first call (see pack_for_cpu)
    return module


def swap_linear_layers(module: Any, spec: QuantSpec, compute_dtype: Any, device: str) -> int:
    """Replace every eligible ``nn.Linear`` by its bitsandbytes counterpart; returns how many."""
    import bitsandbytes as bnb
    import torch

    swapped = 0
    # Like transformers' own bnb integration: layers a model keeps in fp32 stay unquantized
    # (T5's "wo" casts its input to its weight's dtype, which would be uint8).
    keep = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
    skip_patterns = tuple(spec.skip_modules) + keep
    for parent_name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) is not torch.nn.Linear or _skipped(full, skip_patterns):
                continue
            weight = child.weight.data
            bias = child.bias.data.to(compute_dtype) if child.bias is not None else None
            if spec.qtype == "int8":
                new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=bias is not None,
                                          has_fp16_weights=False)
                new.weight = bnb.nn.Int8Params(weight.to(compute_dtype), requires_grad=False,
                                               has_fp16_weights=False)
            else:
                new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=bias is not None,
                                        compute_dtype=compute_dtype, quant_type=spec.qtype,
                                        compress_statistics=bool(spec.option("double_quant", False)))
                new.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=spec.qtype,
                                               compress_statistics=bool(spec.option("double_quant", False)))
            if bias is not None:
                new.bias = torch.nn.Parameter(bias, requires_grad=False)
            new = new.to(device)  # .to() is where bitsandbytes quantizes
            if isinstance(new, bnb.nn.Linear4bit):
                # A new module starts in training mode, and a 4-bit layer in training mode never
                # takes bitsandbytes' CPU kernel: every call dequantizes the whole weight to bf16
                # (measured on zoo:shapes: +1.3 MiB of heap per call). It takes the mode of the
                # layer it replaces (eval in a loaded model, as from_pretrained leaves it).
                new.train(child.training)
                if not fits_cpu_layout(new):  # bitsandbytes' conversion would fail an assert in forward
                    new.support_avx512bf16_for_cpu = False
                new.register_state_dict_pre_hook(_unpack_before_saving)
                new.register_state_dict_post_hook(_repack_after_saving)
            setattr(parent, child_name, new)
            swapped += 1
    return swapped


def _skipped(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, p) or p in name.split(".") for p in patterns)


def load_prequantized(module: Any, state: dict[str, Any], spec: QuantSpec, compute_dtype: Any, device: str) -> None:
    """Swap in empty bitsandbytes layers, then fill them from a saved (already packed) state dict."""
    import bitsandbytes as bnb
    import torch

    swap_linear_layers(module, spec, compute_dtype, "cpu")  # structure only; overwritten below
    plain = {}
    for name, layer in module.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(layer, bnb.nn.Linear4bit):
            stats = {k[len(prefix) + len("weight."):]: v for k, v in state.items()
                     if k.startswith(prefix + "weight.")}
            layer.weight = bnb.nn.Params4bit.from_prequantized(state[prefix + "weight"], stats,
                                                               requires_grad=False, device=torch.device(device))
        elif isinstance(layer, bnb.nn.Linear8bitLt):
            data = state[prefix + "weight"]
            layer.weight = bnb.nn.Int8Params(data, requires_grad=False, has_fp16_weights=False,
                                             CB=data, SCB=state[prefix + "SCB"])
            layer.state.CB = layer.state.SCB = None  # drop the placeholder's cached matrices
        else:
            continue
        if layer.bias is not None:
            layer.bias = torch.nn.Parameter(state[prefix + "bias"].to(compute_dtype), requires_grad=False)
    quantized_prefixes = tuple(f"{n}." for n, m in module.named_modules()
                               if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)))
    for key, value in state.items():
        if not key.startswith(quantized_prefixes):
            plain[key] = value
    module.load_state_dict(plain, strict=False)
    module.to(device)
    if device == "cpu":
        from diffquant.file_pages import in_own_arena, trim_heap

        in_own_arena(pack_for_cpu, module)  # the conversion's temporaries stay out of the main heap
        trim_heap()


# --- bitsandbytes' CPU layout ------------------------------------------------------------------
# On a CPU with AVX512-BF16, a Linear4bit's first forward converts its weight to bitsandbytes' CPU
# kernel layout (``_convert_weight_packed_for_cpu``: nibbles regrouped in blocks of 32 output rows,
# block scales transposed and cast to bf16). The conversion allocates a 32-bit copy of every
# weight of the layer plus several byte-per-weight copies (~6 bytes per weight, 3x the layer's bf16
# size) and replaces the layer's tensors, so the first call's peak holds those temporaries and the
# heap keeps holes between the new tensors. Doing the same conversion while loading moves that
# cost into the load phase (in the loader's own malloc arena, trimmed after), and the model a call
# sees is the one bitsandbytes would have after its first call: the same tensors, the same
# numbers.

def fits_cpu_layout(layer: Any) -> bool:
    """Whether bitsandbytes' CPU layout can hold ``layer``: its conversion needs whole blocks of 32
    output rows and of ``blocksize`` inputs (otherwise it fails an assert, so the layer keeps the
    generic path). Double-quantized layers keep it too: the conversion expands their uint8 scales
    to bf16 (undoing what double quantization saves), and its inverse re-quantizes them, so a
    saved layer would not reload to the same weights."""
    qs = getattr(layer.weight, "quant_state", None)
    if qs is None or qs.nested:
        return False
    out_features, in_features = (int(d) for d in qs.shape)
    return out_features % CPU_BLOCK_N == 0 and in_features % qs.blocksize == 0 and in_features % 2 == 0


def _packable(layer: Any) -> bool:
    """Whether bitsandbytes' forward would convert ``layer`` to its CPU layout, and can."""
    qs = getattr(layer.weight, "quant_state", None)
    if qs is None or getattr(qs, "packing_format_for_cpu", False) or layer.training:
        return False
    if not getattr(layer, "support_avx512bf16_for_cpu", False) or layer.weight.device.type != "cpu":
        return False
    return fits_cpu_layout(layer)


def pack_for_cpu(module: Any) -> int:
    """Convert every ``Linear4bit`` of ``module`` that bitsandbytes' forward would convert on this
    CPU to that layout now; returns how many. Nothing happens on a CPU without AVX512-BF16, on a
    bitsandbytes without the CPU layout, or for a layer in training mode."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    convert = getattr(bnbf, "_convert_weight_packed_for_cpu", None)
    if convert is None:
        return 0
    packed = 0
    for layer in module.modules():
        if isinstance(layer, bnb.nn.Linear4bit) and _packable(layer):
            layer.weight.data, layer.weight.quant_state = convert(layer.weight.data, layer.weight.quant_state)
            packed += 1
    return packed


def unpack_from_cpu(layer: Any) -> bool:
    """Undo :func:`pack_for_cpu` on one layer (True if it was packed): bitsandbytes' own inverse
    restores the nibbles but leaves non-nested block scales transposed and in bf16, so a state dict
    taken after a CPU forward reloads scrambled scales; here they go back to the flat float32 vector
    ``quantize_4bit`` makes (their values are the bf16 ones the CPU kernel computes with)."""
    import torch
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    qs = getattr(layer.weight, "quant_state", None)
    if qs is None or not getattr(qs, "packing_format_for_cpu", False):
        return False
    was_nested = bool(getattr(qs, "original_nested", False))
    layer.weight.data, qs = _convert_weight_packed_for_cpu_inverse(layer.weight.data, qs)
    if not was_nested:
        qs.absmax = qs.absmax.T.contiguous().reshape(-1).to(torch.float32)
    layer.weight.quant_state = qs
    return True


def _unpack_before_saving(layer: Any, prefix: str, keep_vars: bool) -> None:
    # With keep_vars the state dict holds the Parameter itself, which re-packing would change under
    # it: the layer then stays unpacked, and bitsandbytes converts it again on its next forward.
    layer._diffquant_repack = unpack_from_cpu(layer) and not keep_vars


def _repack_after_saving(layer: Any, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    if getattr(layer, "_diffquant_repack", False):
        layer._diffquant_repack = False
        pack_for_cpu(layer)  # the state dict keeps the unpacked tensors; the layer gets new ones


# --- One module at a time (diffquant.sensitivity asks these) ---------------------------------

def quantize_linear(linear: Any, spec: QuantSpec, name: str, model: Any) -> Any | None:
    """The bitsandbytes layer that ``linear`` (called ``name`` in ``model``) becomes under ``spec``,
    as a new module; None when the recipe keeps it precise."""
    import copy

    import torch

    if keeps_precise(spec, name, model):
        return None
    holder = torch.nn.ModuleDict({"layer": copy.deepcopy(linear)})
    compute = getattr(torch, spec.option("compute_dtype")) if spec.option("compute_dtype") else linear.weight.dtype
    swap_linear_layers(holder, spec, compute, linear.weight.device.type)
    return holder["layer"]


def keeps_precise(spec: QuantSpec, name: str, model: Any) -> bool:
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    return _skipped(name, tuple(spec.skip_modules) + keep)


def keep_precise(spec: QuantSpec, keep: dict[str, str | None], model: Any) -> QuantSpec:
    """``spec`` with the modules named in ``keep`` left in full precision (bnb has no per-module
    type). ``_skipped`` matches a dotted name whole; a top-level name would also match every
    module of that short name (``proj_out`` in ``single_transformer_blocks.0.proj_out``), so it is
    written as the one-name glob ``[p]roj_out``."""
    from dataclasses import replace

    exact = {n if "." in n else f"[{n[0]}]{n[1:]}" for n in keep}
    return replace(spec, skip_modules=tuple(sorted(set(spec.skip_modules) | exact)))


def upgrade_type(spec: QuantSpec) -> str | None:
    return None  # one bnb type per component: a kept module goes back to full precision
# bitsandbytes' storage: 4-bit values packed two per byte, one float32 absmax per block of 64 weights
# and the 16-entry float32 code book per layer; with double quantization the absmax values become
# uint8 with one float32 absmax per 256 of them and a 256-entry code book. LLM.int8(): int8 weights
# and one float32 scale per output row (SCB).
BLOCKSIZE_4BIT = 64
NESTED_BLOCKSIZE = 256
CPU_BLOCK_N = 32  # output rows per block of bitsandbytes' CPU layout (its default block_n)


def linear_bytes(qtype: str, out_features: int, in_features: int, double_quant: bool,
                 cpu_layout: bool = False) -> int:
    """Bytes bitsandbytes stores for one ``Linear`` weight (without the bias). ``cpu_layout``: the
    layer is in bitsandbytes' CPU kernel layout (:func:`pack_for_cpu`), whose block scales are bf16."""
    n = out_features * in_features
    if qtype == "int8":
        return n + 4 * out_features
    blocks = -(-n // BLOCKSIZE_4BIT)
    packed = -(-n // 2) + 16 * 4
    if double_quant:
        return packed + blocks + 4 * -(-blocks // NESTED_BLOCKSIZE) + 256 * 4
    if cpu_layout and out_features % CPU_BLOCK_N == 0 and in_features % BLOCKSIZE_4BIT == 0:
        return packed + 2 * blocks
    return packed + 4 * blocks


def cpu_layout_here() -> bool:
    """Whether 4-bit layers loaded on this machine's CPU get bitsandbytes' CPU layout."""
    try:
        import bitsandbytes.functional as bnbf
    except ImportError:
        return False
    return hasattr(bnbf, "_convert_weight_packed_for_cpu") and bool(bnbf.has_avx512bf16())


def stored_bytes(spec: QuantSpec, model: Any, ctx: ComponentContext) -> int:
    """Bytes this component holds once loaded with ``spec`` (``model``: the plain meta-device model).
    Same layer choice as :func:`swap_linear_layers`: exact ``nn.Linear`` layers, minus ``skip`` and
    the model's ``_keep_in_fp32_modules``; biases in the compute dtype."""
    import torch

    from diffquant.backends.base import count_stored_bytes, dtype_size

    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    patterns = tuple(spec.skip_modules) + keep
    bias_size = dtype_size(_compute_dtype(spec, ctx))
    double_quant = bool(spec.option("double_quant", False))
    cpu_layout = ctx.device == "cpu" and spec.qtype != "int8" and cpu_layout_here()

    def converted(name: str, module: Any) -> int | None:
        if not name or type(module) is not torch.nn.Linear or _skipped(name, patterns):
            return None
        bias = module.bias.numel() * bias_size if module.bias is not None else 0
        return linear_bytes(spec.qtype, module.out_features, module.in_features, double_quant, cpu_layout) + bias

    return count_stored_bytes(model, converted)


# --- Saving and reloading (diffquant quantize) -----------------------------------------------

def save(component: Any, spec: QuantSpec, target: SaveTarget) -> str:
    """On CUDA the libraries save bitsandbytes themselves; on CPU diffquant writes bitsandbytes' own
    packed state dict plus the ``BitsAndBytesConfig`` a GPU save would record."""
    from diffquant.export.files import save_config, save_state, write_marker
    from diffquant.file_pages import in_own_arena, trim_heap

    if target.device != "cpu":
        return save_native(component, spec, target)
    target.folder.mkdir(parents=True)
    save_config(component, target.folder, _gpu_config(spec, component, target.dtype))
    # The state dict's unpacked copies, the layers' re-packed tensors and safetensors' serialised
    # bytes come from a short-lived arena and are handed back: the quantized-weights cache is
    # written right after quantizing, and its temporaries must not stay in the model's heap.
    weights = in_own_arena(save_state, component, target.folder)
    trim_heap()
    return write_marker(component, spec, target.folder, "bnb-prequantized", weights)


def _gpu_config(spec: QuantSpec, component: Any, dtype: Any) -> dict[str, Any]:
    """The BitsAndBytesConfig diffusers/transformers would have written on a GPU for this spec."""
    import diffusers
    import transformers

    from diffquant.export.files import library_of

    ctx = ComponentContext("", library_of(component), type(component).__name__, "", dtype, "cuda", False)
    config = load_config(spec, ctx)
    assert isinstance(config, (diffusers.BitsAndBytesConfig, transformers.BitsAndBytesConfig))
    return dict(config.to_dict())


def plain_load(component: Any) -> PlainLoad | None:
    """transformers loads the packed weights on CPU and GPU (every tensor equal to diffquant's, yet on
    CPU the text encoder's output differs in the last bf16 bits); diffusers' loader refuses to run
    without a GPU. Either way the library puts the layers on the GPU itself."""
    c = component
    if c.format == "bnb-prequantized" and c.library == "diffusers":
        return PlainLoad(False, True, "diffusers from_pretrained (BitsAndBytesConfig in config.json; bitsandbytes' "
                                      "own packed layout, the one a GPU save writes; not exercised by diffquant's "
                                      "CPU-only tests)",
                         "diffusers' bitsandbytes loader needs a GPU ('No GPU found. A GPU is needed for "
                         "quantization.'), although bitsandbytes itself runs on CPU", on_device=True)
    if c.format == "bnb-prequantized":
        return PlainLoad(True, True, "transformers from_pretrained (BitsAndBytesConfig in config.json); on CPU its "
                                     "output is close to diffquant's, not bit-identical (same tensors, measured)",
                         on_device=True)
    return PlainLoad(True, True, f"{c.library} from_pretrained", on_device=True)


def load_saved(folder: Path, meta: dict[str, Any], spec: QuantSpec, dtype: Any, device: str) -> Any:
    from diffquant.export.files import empty_model, load_state, restore_saved_dtypes

    if meta["format"] != "bnb-prequantized":
        raise DiffquantError(f"Unknown saved bnb format {meta['format']!r} in {folder}.",
                             hint="re-export the model with this version of diffquant")
    def load() -> Any:
        state = load_state(folder, meta)
        model = empty_model(folder, meta["class_name"], dtype)
        load_prequantized(model, state, spec, dtype, device)
        restore_saved_dtypes(model, state)
        return model

    if device != "cpu":
        return load()
    from diffquant.file_pages import in_own_arena, release_weight_files, trim_heap

    # As when quantizing on load: in the loader's own arena, and the saved file let go once read
    # (its tensors are views of the file's mapping; the model keeps copies of its own).
    model = in_own_arena(load)
    own_quant_states(model)
    release_weight_files(model)
    trim_heap()
    return model


def own_quant_states(module: Any) -> int:
    """Give every 4-bit layer's weight and quantization state (absmax, code book) memory of its
    own where it is still a view of a mapped weight file (a loaded safetensors); returns how many
    tensors were copied. ``file_pages.release_weight_files`` covers the plain tensors."""
    import bitsandbytes as bnb

    from diffquant.file_pages import file_ranges, is_mapped

    ranges = file_ranges()
    copied = 0
    for layer in module.modules():
        if not isinstance(layer, bnb.nn.Linear4bit):
            continue
        if is_mapped(ranges, layer.weight.data):
            layer.weight.data = layer.weight.data.clone()
            copied += 1
        states = [layer.weight.quant_state]
        while states:
            qs = states.pop()
            if qs is None:
                continue
            for attr in ("absmax", "code", "offset"):
                t = getattr(qs, attr, None)
                if t is not None and is_mapped(ranges, t):
                    setattr(qs, attr, t.clone())
                    copied += 1
            states.append(getattr(qs, "state2", None))
    return copied


evaluation_copy = same_layer
