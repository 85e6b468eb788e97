"""Where an export loads, and the exact lines that load it without diffquant. Each backend's module
says how plain libraries load its components (``plain_load``); the facts below live there.

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

from diffquant.backends.base import PlainLoad
from diffquant.export.files import COMPONENT_MARKER, EXPORT_MARKER

MARKER = EXPORT_MARKER


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


Support = PlainLoad  # whether plain libraries load a component, and how (kept under its old name)


def plain_support(c: ComponentExport) -> Support:
    """Whether plain diffusers/transformers (plus the backend's own package) load this component:
    its backend answers (``plain_load``), else the library's own format does."""
    if c.backend is not None:
        from diffquant.backends import get_backend

        answer = get_backend(c.backend).plain_load(c)
        if answer is not None:
            return answer
    how = {"native": f"{c.library} from_pretrained",
           "native-pickle": f"{c.library} from_pretrained (a pickle: trust the source)"}.get(c.format)
    if how is None:
        return Support(False, False, "diffquant only", f"unknown format {c.format!r}")
    return Support(True, True, how)


def plain_code(export: Export, device: str = "cpu", folder: str | None = None) -> str | None:
    """Python lines that load the export with diffusers/transformers (no diffquant) on ``device``
    ("cpu" or "cuda"), ending with ``pipe``; None where they cannot (see :func:`plain_support`)."""
    kinds = {"cpu": "cpu", "cuda": "cuda"}
    if device not in kinds:
        raise ValueError(device)
    supports = [(c, plain_support(c)) for c in export.components]
    if not all(getattr(s, device) for _, s in supports):
        return None
    imports = {"import torch", f"from diffusers import {export.pipeline_class}"}
    pre: list[str] = []
    passed: list[str] = []
    post: list[str] = []
    for c, s in supports:
        imports.update(s.imports)
        if s.defines and "\n".join(s.defines) not in "\n".join(pre):
            pre += s.defines
        if s.before:
            pre += s.before
            passed.append(c.name)
        post += s.after
    on_gpu_already = any(s.on_device for _, s in supports)
    args = "".join(f"{n}={n}, " for n in passed)
    lines = sorted(imports) + ["", f'folder = "{folder or export.label}"  # this folder',
                               f"dtype = torch.{export.dtype}", *pre,
                               f"pipe = {export.pipeline_class}.from_pretrained(folder, {args}torch_dtype=dtype)", *post]
    if device == "cuda" and not on_gpu_already:
        lines.append('pipe.to("cuda")')
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


def diffquant_code(export: Export, folder: str | None = None) -> str:
    return (f'import diffquant\n\npipe = diffquant.load_pipeline("{folder or export.label}"'
            f'{", allow_pickle=True" if has_pickle_format(export) else ""})  # device="cpu" or "cuda"\n')


def has_pickle_format(export: Export) -> bool:
    return any(c.format.endswith("pickle") for c in export.components)
