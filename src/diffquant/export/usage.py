"""Where an export loads, and the exact lines that load it without diffquant.

Facts measured with diffusers 0.42, transformers 5, optimum-quanto 0.2.7, bitsandbytes 0.50 and
torchao 0.18 (tests/test_export_load.py runs the generated lines and compares images):
- torchao: ``from_pretrained`` reads the flattened safetensors (torchao >= 0.16).
- optimum-quanto: its own ``QuantizedDiffusersModel`` / ``QuantizedTransformersModel`` read the
  quantization map. diffusers' ``from_pretrained`` also reads a quanto transformer (QuantoConfig in
  config.json) but rebuilds int4 weights in quanto's generic layout, not the CPU kernel's packing
  that quantize-on-load picks (images differ slightly); transformers 5 ignores pre-quantized quanto
  weights (the text encoder comes out wrong).
- bitsandbytes: transformers loads the packed weights on CPU and GPU (every tensor equal to
  diffquant's, yet on CPU the text encoder's output differs in the last bf16 bits: close, not
  bit-identical); diffusers' loader refuses to run without a GPU ("No GPU found. A GPU is needed
  for quantization.").
- FP8 layerwise: ``from_pretrained`` upcasts the float8 values exactly; ``enable_layerwise_casting``
  casts them back, so the weights are the exported ones.
- GGUF: ``from_single_file(file, config=component folder, quantization_config=GGUFQuantizationConfig)``;
  on CPU diffusers dequantizes in float16, diffquant's kernel (the CPU default) as ggml does, in
  float32: the same images only with ``cpu_kernel=false`` (docs/cpu-lowbit.md).
No torch import here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffquant.export.formats import COMPONENT_MARKER, GGUF_FILE

MARKER = "diffquant_quantized.json"  # same name as diffquant.serialize.MARKER (no import cycle)


@dataclass(frozen=True)
class ComponentExport:
    name: str
    library: str  # "diffusers" | "transformers"
    class_name: str
    format: str  # see diffquant.export.formats
    spec: dict[str, Any] | None  # the quantization spec, None when not quantized

    @property
    def backend(self) -> str | None:
        return str(self.spec["backend"]) if self.spec else None


@dataclass(frozen=True)
class Export:
    folder: Path
    meta: dict[str, Any]  # diffquant_quantized.json
    pipeline_class: str
    components: tuple[ComponentExport, ...]
    name: str | None = None  # what the card calls the folder (its final name while written under a temporary one)

    @property
    def label(self) -> str:
        return self.name or self.folder.name

    @property
    def dtype(self) -> str:
        return str(self.meta["recipe"].get("dtype", "bfloat16"))

    def quantized(self) -> list[ComponentExport]:
        return [c for c in self.components if c.spec is not None]


def read_export(folder: Path, name: str | None = None) -> Export:
    from diffquant.errors import DiffquantError

    folder = Path(folder)
    if not (folder / MARKER).is_file():
        raise DiffquantError(f"{str(folder)!r} is not a diffquant export (no {MARKER}).",
                             hint="give a folder written by `diffquant quantize`")
    meta = json.loads((folder / MARKER).read_text())
    index = json.loads((folder / "model_index.json").read_text())
    specs = {s.get("target", "default"): s for s in meta["recipe"].get("quant", [])}
    components = []
    for component, fmt in meta["components"].items():
        library, class_name = index.get(component, [None, None])
        marker = folder / component / COMPONENT_MARKER
        spec = json.loads(marker.read_text())["spec"] if marker.is_file() else None
        if spec is None and (fmt != "native" or _has_quantization_config(folder / component)):
            spec = specs.get(component) or specs.get("default")
        components.append(ComponentExport(component, str(library), str(class_name), fmt, spec))
    return Export(folder, meta, str(index["_class_name"]), tuple(components), name)


def _has_quantization_config(folder: Path) -> bool:
    config = folder / "config.json"
    return config.is_file() and "quantization_config" in json.loads(config.read_text())


@dataclass(frozen=True)
class Support:
    cpu: bool
    cuda: bool
    how: str  # the loader
    why_not: str = ""  # when one of the two is False


def plain_support(c: ComponentExport) -> Support:
    """Whether plain diffusers/transformers (plus the backend's own package) load this component."""
    if c.format == "bnb-prequantized" and c.library == "diffusers":
        return Support(False, True, "diffusers from_pretrained (BitsAndBytesConfig in config.json; bitsandbytes' "
                                    "own packed layout, the one a GPU save writes; not exercised by diffquant's "
                                    "CPU-only tests)",
                       "diffusers' bitsandbytes loader needs a GPU ('No GPU found. A GPU is needed for "
                       "quantization.'), although bitsandbytes itself runs on CPU")
    if c.format == "native" and c.backend == "sdnq":
        return Support(True, True, f"{c.library} from_pretrained with sdnq installed: close, not bit-identical "
                                   "(diffusers 0.42.1 + sdnq 0.2.8 round the saved float32 scales through "
                                   "bf16 on load; diffquant.load_pipeline restores them exactly)")
    how = {
        "native": f"{c.library} from_pretrained",
        "native-pickle": f"{c.library} from_pretrained (a pickle: trust the source)",
        "bnb-prequantized": ("transformers from_pretrained (BitsAndBytesConfig in config.json); on CPU its "
                             "output is close to diffquant's, not bit-identical (same tensors, measured)"),
        "layerwise-fp8": f"{c.library} from_pretrained, then layerwise casting to float8",
        "gguf-file": ("diffusers from_single_file(..., config=folder, GGUFQuantizationConfig); on CPU diffusers "
                      "dequantizes in float16 while diffquant's default there (its kernel, unless "
                      "cpu_kernel=false) follows ggml's float32: close, not bit-identical"),
        "quanto-requantize": ("optimum-quanto QuantizedDiffusersModel (diffusers' from_pretrained reads it "
                              "too, but int4 then keeps quanto's generic layout, not the CPU kernel's packing: "
                              "close, not bit-identical)" if c.library == "diffusers"
                              else "optimum-quanto QuantizedTransformersModel (transformers 5 ignores "
                                   "pre-quantized quanto weights and loads garbage)"),
    }.get(c.format)
    if how is None:
        return Support(False, False, "diffquant only", f"unknown format {c.format!r}")
    return Support(True, True, how)


def plain_code(export: Export, device: str = "cpu", folder: str | None = None) -> str | None:
    """Python lines that load the export with diffusers/transformers (no diffquant) on ``device``
    ("cpu" or "cuda"), ending with ``pipe``; None where they cannot (see :func:`plain_support`)."""
    kinds = {"cpu": "cpu", "cuda": "cuda"}
    if device not in kinds:
        raise ValueError(device)
    if not all(getattr(plain_support(c), device) for c in export.components):
        return None
    imports = {"import torch", f"from diffusers import {export.pipeline_class}"}
    pre: list[str] = []
    passed: list[str] = []
    post: list[str] = []
    for c in export.components:
        if c.format == "gguf-file":
            imports.add(f"from diffusers import {c.class_name}, GGUFQuantizationConfig")
            pre += [f"{c.name} = {c.class_name}.from_single_file(",
                    f'    f"{{folder}}/{c.name}/{GGUF_FILE}", config=f"{{folder}}/{c.name}",',
                    "    quantization_config=GGUFQuantizationConfig(compute_dtype=dtype), torch_dtype=dtype)"]
            passed.append(c.name)
        elif c.format == "quanto-requantize":
            pre += _quanto_lines(c, imports, pre)
            passed.append(c.name)
        elif c.format == "layerwise-fp8" and c.spec is not None:
            post += _casting_lines(c, imports)
    on_gpu_already = any(c.backend == "bnb" for c in export.components)
    args = "".join(f"{n}={n}, " for n in passed)
    lines = sorted(imports) + ["", f'folder = "{folder or export.label}"  # this folder',
                               f"dtype = torch.{export.dtype}", *pre,
                               f"pipe = {export.pipeline_class}.from_pretrained(folder, {args}torch_dtype=dtype)", *post]
    if device == "cuda" and not on_gpu_already:
        lines.append('pipe.to("cuda")')
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


def _quanto_lines(c: ComponentExport, imports: set[str], pre: list[str]) -> list[str]:
    """optimum-quanto's own loaders (its quantization map + safetensors), one wrapper class per kind."""
    if c.library == "transformers":
        imports |= {"from optimum.quanto import QuantizedTransformersModel",
                    "from transformers import AutoModelForTextEncoding"}
        wrapper, head = "QuantoTextEncoder", ["class QuantoTextEncoder(QuantizedTransformersModel):",
                                               "    auto_class = AutoModelForTextEncoding"]
        tail = ""
    else:
        imports |= {"from optimum.quanto import QuantizedDiffusersModel", f"from diffusers import {c.class_name}"}
        wrapper = f"Quanto{c.class_name}"
        head = [f"class {wrapper}(QuantizedDiffusersModel):", f"    base_class = {c.class_name}"]
        tail = ".to(dtype)"  # quanto builds the empty model in float32: bring biases back to the dtype
    lines = ["", *head, ""] if f"class {wrapper}(" not in "\n".join(pre) else []
    return lines + [f'{c.name} = {wrapper}.from_pretrained(f"{{folder}}/{c.name}")._wrapped{tail}']


def _casting_lines(c: ComponentExport, imports: set[str]) -> list[str]:
    assert c.spec is not None
    storage = "torch.float8_e4m3fn" if c.spec.get("type") == "e4m3" else "torch.float8_e5m2"
    skip = tuple(c.spec.get("skip_modules") or ())
    if not skip and c.library == "diffusers":
        return [f"pipe.{c.name}.enable_layerwise_casting(storage_dtype={storage}, compute_dtype=dtype)"]
    imports.add("from diffusers.hooks import apply_layerwise_casting")
    if skip:
        pattern = repr(skip)
    else:
        imports.add("from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN")
        pattern = f"tuple(DEFAULT_SKIP_MODULES_PATTERN) + tuple(pipe.{c.name}._keep_in_fp32_modules or ())"
    return [f"apply_layerwise_casting(pipe.{c.name}, storage_dtype={storage}, compute_dtype=dtype,",
            f"                        skip_modules_pattern={pattern})"]


def diffquant_code(export: Export, folder: str | None = None) -> str:
    return (f'import diffquant\n\npipe = diffquant.load_pipeline("{folder or export.label}"'
            f'{", allow_pickle=True" if has_pickle_format(export) else ""})  # device="cpu" or "cuda"\n')


def has_pickle_format(export: Export) -> bool:
    return any(c.format.endswith("pickle") for c in export.components)
