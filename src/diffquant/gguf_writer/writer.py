"""Streaming, atomic GGUF export of one diffusers model (e.g. a pipeline's transformer).

Two passes over the safetensors *headers* and one over the data:
1. plan: names and shapes (no data read) -> output tensors (layout) -> a type per tensor
   (policy) -> byte sizes; GGUF puts every tensor's type, shape and offset before the data.
2. write: header, metadata and tensor infos, then each tensor: its source rows are read lazily
   (``safe_open``), quantized chunk by chunk and appended. Peak memory beyond the imports is
   about one source tensor plus its quantized bytes.
The file is written to a temporary name in the destination folder and moved into place with
``os.replace`` only when complete, so a crash never leaves a truncated ``.gguf`` behind.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diffquant.atomic import atomic_path
from diffquant.errors import DiffquantError, unknown_choice
from diffquant.gguf_writer.layout import OutTensor, Part, plan_layout
from diffquant.gguf_writer.policy import TypePolicy
from diffquant.gguf_writer.quantize import nbytes, normalize_type, quantize_tensor

if TYPE_CHECKING:  # pragma: no cover
    import torch

# general.architecture values of the community loaders (ComfyUI-GGUF's IMG_ARCH_LIST).
ARCHITECTURES = {
    "FluxTransformer2DModel": "flux", "SD3Transformer2DModel": "sd3",
    "AuraFlowTransformer2DModel": "aura", "LTXVideoTransformer3DModel": "ltxv",
    "HunyuanVideoTransformer3DModel": "hyvid", "WanTransformer3DModel": "wan",
    "HiDreamImageTransformer2DModel": "hidream", "Lumina2Transformer2DModel": "lumina2",
    "CosmosTransformer3DModel": "cosmos",
}
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")
GGML_MAX_NAME = 64  # ggml's tensor-name buffer, terminating NUL included

Progress = Callable[[int, int, str, str], None]  # (index, total, tensor name, type)

# Bump when the bytes written for the same model and options change (policy, layout, quantizers),
# so that caches keyed on it (the gguf recipe backend) rebuild their files.
WRITER_VERSION = 2  # 2: >2-D tensors kept as F32/F16, never BF16 (diffusers can only run those)



@dataclass(frozen=True)
class ExportResult:
    out_path: Path
    qtype: str
    tensor_types: dict[str, str]  # output tensor name -> GGUF type, in file order
    bytes_written: int
    seconds: float
    layout: str = "diffusers"
    reasons: dict[str, str] = field(default_factory=dict)  # why a tensor is not `qtype`
    warnings: tuple[str, ...] = ()
    source_bytes: int = 0  # the source tensors' bytes as stored (e.g. bf16)

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.tensor_types.values():
            counts[t] = counts.get(t, 0) + 1
        return counts


# --------------------------------------------------------------------------- source model


def resolve_model_folder(model_dir: Path, component: str) -> Path:
    """A pipeline folder + component name, or a single model folder -> the model's folder."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise DiffquantError(f"Model folder {str(model_dir)!r} does not exist.")
    index = model_dir / "model_index.json"
    if index.exists():
        components = sorted(k for k, v in json.loads(index.read_text()).items()
                            if not k.startswith("_") and isinstance(v, list))
        if component not in components or not (model_dir / component).is_dir():
            raise unknown_choice("pipeline component", component, components,
                                 hint="pass --component with one of the pipeline's model folders")
        return model_dir / component
    if (model_dir / "config.json").exists():
        return model_dir
    raise DiffquantError(
        f"{str(model_dir)!r} is neither a diffusers pipeline folder (model_index.json) nor a "
        "model folder (config.json + safetensors).")


class SafetensorsSource:
    """A model folder's safetensors weights, opened lazily (memory-mapped): tensors are read
    only when asked for, shard by shard as the index says."""

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open

        self.folder = folder
        files = self._weight_files(folder)
        self._slices: dict[str, Any] = {}
        self._handles = []
        for path in files:
            handle = safe_open(str(path), framework="pt")
            self._handles.append(handle)
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                self._slices[name] = handle.get_slice(name)
        if not self._slices:
            raise DiffquantError(f"No tensors found in {folder}.")

    @staticmethod
    def _weight_files(folder: Path) -> list[Path]:
        indexes = sorted(folder.glob("*.safetensors.index.json"), key=lambda p: len(p.name))
        if indexes:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
            return [folder / f for f in dict.fromkeys(weight_map.values())]
        for name in WEIGHT_FILES:
            if (folder / name).exists():
                return [folder / name]
        files = sorted(folder.glob("*.safetensors"))
        if len(files) == 1:
            return files
        if not files:
            hint = ("convert the .bin weights to safetensors first (save_pretrained(..., "
                    "safe_serialization=True))") if any(folder.glob("*.bin")) else None
            raise DiffquantError(f"No safetensors weights in {folder}.", hint=hint)
        raise DiffquantError(f"Several safetensors files in {folder} and no index: "
                             f"{[f.name for f in files]}.", hint="keep one weight file per folder")

    def names(self) -> list[str]:
        """Sorted, as in a single safetensors file, so the output does not depend on sharding."""
        return sorted(self._slices)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slices[name].get_shape())

    def dtype(self, name: str) -> str:
        return str(self._slices[name].get_dtype())  # "BF16", "F16", "F32", ...

    def rows(self, part: Part) -> torch.Tensor:
        sl = self._slices[part.source]
        if part.start == 0 and part.stop is None:
            t = sl[:]
        else:
            t = sl[part.start:part.stop]
        return t.reshape(1) if t.dim() == 0 else t

    def read_config(self) -> dict[str, Any]:
        path = self.folder / "config.json"
        return json.loads(path.read_text()) if path.exists() else {}


# --------------------------------------------------------------------------- export


@dataclass(frozen=True)
class _Planned:
    tensor: OutTensor
    qtype: str
    reason: str
    nbytes: int


def _plan(source: SafetensorsSource, class_name: str, layout: str, policy: TypePolicy
          ) -> tuple[list[_Planned], list[str]]:
    shapes = {n: source.shape(n) or (1,) for n in source.names()}
    tensors, warnings = plan_layout(layout, class_name, shapes)
    planned = []
    for t in tensors:
        dtypes = {source.dtype(s) for s in t.sources}
        dtype = dtypes.pop() if len(dtypes) == 1 else "F32"
        choice = policy.choose(t.name, t.shape, dtype, t.sources)
        planned.append(_Planned(t, choice.qtype, choice.reason, nbytes(choice.qtype, t.shape)))
    for pattern in policy.unused_patterns():
        warnings.append(f"--keep pattern {pattern!r} matched no tensor.")
    long_names = [t.name for t in tensors if len(t.name.encode()) >= GGML_MAX_NAME]
    if long_names:
        warnings.append(f"{len(long_names)} tensor name(s) have {GGML_MAX_NAME}+ bytes (e.g. {long_names[0]!r}): "
                        "diffusers and gguf-py read them, llama.cpp-based tools may not.")
    return planned, warnings


def _tensor_data(source: SafetensorsSource, p: _Planned, threads: int | None) -> np.ndarray:
    try:
        pieces = [quantize_tensor(source.rows(part), p.qtype, threads) for part in p.tensor.parts]
    except ValueError as exc:
        raise DiffquantError(f"Cannot write {p.tensor.name} as {p.qtype}: {exc}.") from None
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)


def export_gguf(model_dir: Path, out_path: Path, qtype: str, *, component: str = "transformer",
                layout: str = "diffusers", keep: str | None = None, default_keep: bool = True,
                source_name: str | None = None, progress: Progress | None = None,
                threads: int | None = None) -> ExportResult:
    """Write ``component`` of the diffusers model in ``model_dir`` as a GGUF file.

    ``qtype`` is the target type of the big 2-D weights (case-insensitive, see
    ``SUPPORTED_TYPES``); ``keep`` adds override patterns (``"norm,*.mod*=Q8_0"``);
    ``default_keep=False`` quantizes the embedders and final layer too. ``layout`` is
    ``"diffusers"`` (load with ``from_single_file(path, config=...)``) or ``"bfl"`` (FLUX only).
    ``threads``: chunks quantized in parallel (default: $DIFFQUANT_GGUF_THREADS or all CPUs);
    the bytes do not depend on it.
    """
    import gguf

    from diffquant._version import __version__

    started = time.perf_counter()
    from diffquant.gguf_writer.mixes import is_mix

    qtype = qtype.strip().upper() if is_mix(qtype) else normalize_type(qtype)
    policy = TypePolicy(qtype, keep, default_keep=default_keep)
    folder = resolve_model_folder(Path(model_dir), component)
    source = SafetensorsSource(folder)
    class_name = str(source.read_config().get("_class_name", "unknown"))
    planned, warnings = _plan(source, class_name, layout, policy)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path=None, arch=ARCHITECTURES.get(class_name, class_name.lower()))
    name = source_name or str(model_dir)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_name(name)
    writer.add_quantized_by(f"diffquant {__version__}")
    writer.add_string("diffquant.version", __version__)
    writer.add_uint32("diffquant.writer_version", WRITER_VERSION)
    writer.add_string("diffquant.source_model", name)
    writer.add_string("diffquant.component", component if folder != Path(model_dir) else folder.name)
    writer.add_string("diffquant.diffusers_class", class_name)
    writer.add_string("diffquant.layout", layout)
    writer.add_string("diffquant.qtype", qtype)
    writer.add_string("diffquant.keep", keep or "")
    for p in planned:
        writer.add_tensor_info(p.tensor.name, p.tensor.shape, np.dtype(np.float32), p.nbytes,
                               raw_dtype=gguf.GGMLQuantizationType[p.qtype])
    try:
        with atomic_path(out_path, suffix=".gguf") as tmp:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for i, p in enumerate(planned):
                if progress:
                    progress(i, len(planned), p.tensor.name, p.qtype)
                writer.write_tensor_data(_tensor_data(source, p, threads))
            assert writer.fout is not None
            for f in writer.fout:
                f.flush()
                os.fsync(f.fileno())
            writer.close()
    except BaseException:
        writer.close()
        raise
    return ExportResult(
        out_path=out_path, qtype=qtype,
        tensor_types={p.tensor.name: p.qtype for p in planned},
        bytes_written=out_path.stat().st_size, seconds=time.perf_counter() - started,
        layout=layout, reasons={p.tensor.name: p.reason for p in planned if p.reason},
        warnings=tuple(warnings),
        source_bytes=sum(_source_nbytes(source, n) for n in source.names()),
    )


def _source_nbytes(source: SafetensorsSource, name: str) -> int:
    sizes = {"F64": 8, "F32": 4, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "F8_E4M3": 1, "F8_E5M2": 1}
    size = sizes.get(source.dtype(name), 2)
    return int(np.prod(source.shape(name), dtype=np.int64)) * size
