"""optimum-quanto int8/int4/int2/fp8 weights, through diffusers'/transformers' QuantoConfig.

quanto builds a C++ extension on first use (``torch.utils.cpp_extension.load`` into its package's
``library/extensions/<kind>/build``), guarded by torch's ``FileBaton``: a ``build/lock`` file that
waiters poll forever. A worker killed mid-build (a timeout, an OOM kill) leaves that file behind and
every later worker would hang. Before quanto is used, ``prepare_extension_builds`` removes a lock
no live process holds, and fails with the reason after waiting ``LOCK_WAIT_S`` for a live one.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from diffquant.backends.base import (
    ComponentContext,
    MemoryTraits,
    PlainLoad,
    SaveTarget,
    config_only,
    no_cached_file,
    no_compile_issue,
    no_notes,
    nothing_after_load,
    nothing_before_load,
    package_missing,
    same_layer,
)
from diffquant.errors import DiffquantError
from diffquant.recipes.model import QuantSpec

name = "quanto"
packages = ("optimum-quanto",)
cache_quantized = True  # quantize-on-load is slow for big models
# On CPU int4/int2 layers run through unpacked full-precision copies (fitted to CPU-FACTS: quanto-int4
# peak 1.27x bf16 on zoo:flux-dev-slice).
memory = MemoryTraits(reads_source=True, float32_temporaries=True, cpu_dequantized_copies={"int4": 6, "int2": 6})
QUANTO_QMAP = "quanto_qmap.json"  # optimum-quanto's own file name (QuantizedDiffusersModel)
formats = {"quanto-requantize": "safetensors + quanto_qmap.json"}
load_component = config_only
notes = no_notes
cached_file = no_cached_file
compile_breaks = no_compile_issue
before_load = nothing_before_load
after_load = nothing_after_load
_WEIGHTS = {"int8": "int8", "int4": "int4", "int2": "int2", "fp8": "float8"}
# How long a worker waits for another process's extension build before failing (seconds).
LOCK_WAIT_S = float(os.environ.get("DIFFQUANT_QUANTO_LOCK_WAIT_S", "600"))
_EXTENSIONS = ("quanto_cpp", "quanto_cuda", "quanto_hip", "quanto_mps")


def why_not_here(spec: QuantSpec, device: str) -> str | None:
    return package_missing("quanto")


def load_config(spec: QuantSpec, ctx: ComponentContext) -> Any:
    import diffusers
    import transformers

    for note in prepare_extension_builds():
        print(f"diffquant: {note}", file=sys.stderr)
    skip = list(spec.skip_modules) or None
    if ctx.library == "diffusers":
        return diffusers.QuantoConfig(weights_dtype=_WEIGHTS[spec.qtype], modules_to_not_convert=skip)
    return transformers.QuantoConfig(weights=_WEIGHTS[spec.qtype], modules_to_not_convert=skip)


def disk_offload_breaks(spec: QuantSpec) -> str | None:
    # Measured with diffusers 0.42.1 (tests/test_backends.py keeps this honest).
    return "crashes (\"Attempted to access the data pointer on an invalid python storage\")."


def save(component: Any, spec: QuantSpec, target: SaveTarget) -> str:
    """Weights, config and quanto's quantization map: what ``requantize`` and optimum-quanto's own
    ``QuantizedDiffusersModel`` read."""
    import json

    from optimum.quanto import quantization_map

    from diffquant.export.files import save_config, save_state, write_marker

    target.folder.mkdir(parents=True)
    save_config(component, target.folder)
    (target.folder / QUANTO_QMAP).write_text(json.dumps(quantization_map(component), indent=2))
    return write_marker(component, spec, target.folder, "quanto-requantize", save_state(component, target.folder))


def plain_load(component: Any) -> PlainLoad | None:
    """optimum-quanto's own loaders (its quantization map + safetensors), one wrapper class per kind.
    diffusers' ``from_pretrained`` also reads a quanto transformer (QuantoConfig in config.json) but
    rebuilds int4 weights in quanto's generic layout, not the CPU kernel's packing that
    quantize-on-load picks (images differ slightly); transformers 5 ignores pre-quantized quanto
    weights (the text encoder comes out wrong)."""
    c = component
    if c.format not in formats:
        return None
    if c.library == "transformers":
        imports = ("from optimum.quanto import QuantizedTransformersModel",
                   "from transformers import AutoModelForTextEncoding")
        wrapper, head = "QuantoTextEncoder", ("class QuantoTextEncoder(QuantizedTransformersModel):",
                                              "    auto_class = AutoModelForTextEncoding")
        tail = ""
        how = ("optimum-quanto QuantizedTransformersModel (transformers 5 ignores "
               "pre-quantized quanto weights and loads garbage)")
    else:
        imports = ("from optimum.quanto import QuantizedDiffusersModel", f"from diffusers import {c.class_name}")
        wrapper = f"Quanto{c.class_name}"
        head = (f"class {wrapper}(QuantizedDiffusersModel):", f"    base_class = {c.class_name}")
        tail = ".to(dtype)"  # quanto builds the empty model in float32: bring biases back to the dtype
        how = ("optimum-quanto QuantizedDiffusersModel (diffusers' from_pretrained reads it "
               "too, but int4 then keeps quanto's generic layout, not the CPU kernel's packing: "
               "close, not bit-identical)")
    return PlainLoad(True, True, how, imports=imports, defines=("", *head, ""),
                     before=(f'{c.name} = {wrapper}.from_pretrained(f"{{folder}}/{c.name}")._wrapped{tail}',))


def load_saved(folder: Path, meta: dict[str, Any], spec: QuantSpec, dtype: Any, device: str) -> Any:
    import json

    import torch
    from optimum.quanto import requantize

    from diffquant.export.files import empty_model, load_state, restore_saved_dtypes

    if meta["format"] != "quanto-requantize":
        raise DiffquantError(f"Unknown saved quanto format {meta['format']!r} in {folder}.",
                             hint="re-export the model with this version of diffquant")
    # safetensors hands out tensors inside its file mapping, 8-byte aligned; torch's int8 CPU matmul
    # (_weight_int8pack_mm, quanto's CPU path) crashed on such weights (SIGSEGV on flux-dev-slice's
    # x_embedder): copy each into an allocation of its own, which also drops the file pages.
    state = {key: value.clone() if value.data_ptr() % 64 else value
             for key, value in load_state(folder, meta).items()}
    model = empty_model(folder, meta["class_name"], dtype)
    qmap = meta.get("quantization_map") or json.loads((folder / QUANTO_QMAP).read_text())
    requantize(model, state, qmap, device=torch.device(device))
    restore_saved_dtypes(model, state)
    return model


# --- One module at a time (diffquant.sensitivity asks these) ---------------------------------

def quantize_linear(linear: Any, spec: QuantSpec, name: str, model: Any) -> Any | None:
    """The quanto layer that ``linear`` becomes under ``spec`` (a new, frozen module), or None."""
    import copy

    import optimum.quanto as oq
    import torch

    if keeps_precise(spec, name, model):
        return None
    weights = {"int8": oq.qint8, "int4": oq.qint4, "int2": oq.qint2, "fp8": oq.qfloat8}[spec.qtype]
    holder = torch.nn.ModuleDict({"layer": copy.deepcopy(linear)})
    oq.quantize(holder, weights=weights)
    oq.freeze(holder)
    return holder["layer"]


def keeps_precise(spec: QuantSpec, name: str, model: Any) -> bool:
    # diffusers' _replace_with_quanto_layers compares each child's *short* name with the list.
    return any(part in spec.skip_modules for part in name.split("."))


def keep_precise(spec: QuantSpec, keep: dict[str, str | None], model: Any) -> QuantSpec:
    """quanto skips by short name: keeping ``transformer_blocks.0.attn.to_v`` keeps every ``to_v``
    (``keeps_precise`` tells the caller what is really kept)."""
    from dataclasses import replace

    return replace(spec, skip_modules=tuple(sorted(set(spec.skip_modules) | {n.split(".")[-1] for n in keep})))


def upgrade_type(spec: QuantSpec) -> str | None:
    return None
def weight_bytes(qtype: str, out_features: int, in_features: int, dtype_bytes: int) -> int:
    """Bytes optimum-quanto (0.2.7) stores for one ``Linear`` weight (QLinear's ``weight``).

    int8/fp8: one byte per value and a scale (weight dtype) per output row. int4/int2: values
    packed 2 or 4 per byte along the first axis of the grouped tensor, with a scale and a shift
    (weight dtype) per group; the group is 128 inputs, shrunk by 32 until it divides the row,
    else the whole row (``QModuleMixin.__init__``)."""
    n = out_features * in_features
    if qtype in ("int8", "fp8"):
        return n + dtype_bytes * out_features
    per_byte = 2 if qtype == "int4" else 4
    group = None
    if in_features > 128:
        group = 128
        while in_features % group and group > 32:
            group -= 32
        group = group if in_features % group == 0 else None
    rows, cols = (n // group, group) if group else (out_features, in_features)
    return -(-rows // per_byte) * cols + 2 * dtype_bytes * rows


def stored_bytes(spec: QuantSpec, model: Any, ctx: ComponentContext) -> int:
    """Bytes this component holds once loaded with ``spec`` (``model``: the plain meta-device model).
    diffusers/transformers swap every ``nn.Linear`` for a ``QLinear``, minus ``modules_to_not_convert``
    and the model's ``_keep_in_fp32_modules``; each QLinear adds two scalar buffers (input/output
    scale: the compute dtype in diffusers, float32 in transformers)."""
    import torch

    from diffquant.backends.base import count_stored_bytes

    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    patterns = tuple(spec.skip_modules) + keep
    scalar_bytes = 2 * (model.dtype.itemsize if ctx.library == "diffusers" else 4)

    def converted(name: str, module: Any) -> int | None:
        if not name or not isinstance(module, torch.nn.Linear) or _skipped(name, patterns):
            return None
        bias = module.bias.numel() * module.bias.element_size() if module.bias is not None else 0
        return weight_bytes(spec.qtype, module.out_features, module.in_features,
                            module.weight.element_size()) + bias + scalar_bytes

    return count_stored_bytes(model, converted)


def _skipped(name: str, patterns: tuple[str, ...]) -> bool:
    # A module named by a pattern, or inside one (modules_to_not_convert names modules by their path).
    return any(p in name.split(".") or name == p or name.startswith(p + ".") for p in patterns)
def extension_build_dirs() -> list[Path]:
    """The build folders of quanto's registered extensions (where torch puts its ``lock``)."""
    from optimum.quanto.library.extensions import get_extension, is_extension_available

    return [Path(get_extension(n).build_directory) for n in _EXTENSIONS if is_extension_available(n)]


def prepare_extension_builds(wait_s: float | None = None) -> list[str]:
    """Clear stale build locks of quanto's extensions; returns a note per lock removed."""
    return [note for d in extension_build_dirs() if (note := clear_stale_lock(d / "lock", wait_s))]


def lock_holders(lock: Path) -> list[int] | None:
    """PIDs that have ``lock`` open (torch's baton keeps it open while building), from /proc;
    None where that cannot be told (no /proc)."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    try:
        target = lock.stat()
    except FileNotFoundError:
        return []
    holders = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # gone, or another user's process
            continue
        for fd in fds:
            try:
                st = fd.stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                holders.append(int(entry.name))
                break
    return holders


def clear_stale_lock(lock: Path, wait_s: float | None = None, poll_s: float = 0.5) -> str | None:
    """Remove ``lock`` if no live process holds it; wait up to ``wait_s`` (default ``LOCK_WAIT_S``)
    while one does, then fail with the reason instead of hanging in torch's endless wait."""
    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    while lock.exists():
        holders = lock_holders(lock)
        if holders == []:
            lock.unlink(missing_ok=True)
            return f"removed a stale optimum-quanto build lock {lock} (its builder is gone)"
        if time.monotonic() >= deadline:
            who = f"held by pid {', '.join(map(str, holders))}" if holders else "whose owner cannot be told here"
            raise DiffquantError(
                f"optimum-quanto's C++ extension build lock {lock} ({who}) was not released within "
                f"{wait_s:g} s; a worker would otherwise wait for it forever.",
                hint=(f"let that build finish, or stop pid {holders[0]} and delete {lock}" if holders else
                      f"if no quanto build is running, delete {lock}")
                     + "; DIFFQUANT_QUANTO_LOCK_WAIT_S sets how long to wait")
        time.sleep(poll_s)
    return None


evaluation_copy = same_layer
