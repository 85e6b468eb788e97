"""What a loaded pipeline really holds: storage bytes per component, counted from the tensors
themselves (``get_memory_footprint`` reports bf16 sizes for torchao/quanto models)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ComponentStats:
    params: int  # logical weights (a packed 4-bit tensor counts its unpacked elements)
    weight_bytes: int  # bytes of storage actually held, incl. scales and quantization state
    quantized_tensors: int  # parameters stored in a quantized / sub-bf16 format
    class_name: str
    quantized_params: int = 0  # logical weights inside quantized tensors
    quantized_bytes: int = 0  # their storage, incl. scales

    @property
    def quantized_bits_per_weight(self) -> float:
        """Bits per weight of the quantized tensors alone: compare with the format's nominal bits."""
        return 8.0 * self.quantized_bytes / self.quantized_params if self.quantized_params else 0.0

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.weight_bytes / self.params if self.params else 0.0


def _plain_bytes(t: Any) -> int:
    return int(t.numel() * t.element_size())


def tensor_stats(t: Any) -> tuple[int, int, bool]:
    """(logical elements, storage bytes, is_quantized) of one parameter or buffer."""
    import torch

    kind = type(t).__name__
    if kind == "Params4bit":
        qs = t.quant_state
        nbytes = _plain_bytes(t.data)
        if qs is not None:
            nbytes += _plain_bytes(qs.absmax) + _plain_bytes(qs.code)
            if getattr(qs, "state2", None) is not None:
                nbytes += _plain_bytes(qs.state2.absmax) + _plain_bytes(qs.state2.code)
            return int(torch.Size(qs.shape).numel()), nbytes, True
        return t.numel(), nbytes, False
    if kind == "Int8Params":
        scb = getattr(t, "SCB", None)
        return t.numel(), _plain_bytes(t.data) + (_plain_bytes(scb) if scb is not None else 0), t.dtype == torch.int8
    if kind == "GGUFParameter":
        import gguf

        qtype = gguf.GGMLQuantizationType(int(t.quant_type))
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        nbytes = _plain_bytes(t.data)
        unquantized = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
                       gguf.GGMLQuantizationType.BF16)
        return nbytes // type_size * block, nbytes, qtype not in unquantized
    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = t.__tensor_flatten__()
        nbytes = sum(tensor_stats(getattr(t, n))[1] for n in names)
        return t.numel(), nbytes, True
    quantized = t.dtype in (torch.int8, torch.uint8, torch.float8_e4m3fn, torch.float8_e5m2)
    return t.numel(), _plain_bytes(t), quantized


def module_stats(module: Any) -> ComponentStats:
    params = nbytes = quantized = q_params = q_bytes = 0
    seen: set[int] = set()
    # Parameters are weights; buffers (quantizers' activation scales, position tables) only add bytes.
    tensors = [(t, True) for _, t in module.named_parameters(remove_duplicate=True)]
    tensors += [(t, False) for _, t in module.named_buffers()]
    for t, is_param in tensors:
        if id(t) in seen:
            continue
        seen.add(id(t))
        n, b, q = tensor_stats(t)
        params, nbytes, quantized = params + (n if is_param else 0), nbytes + b, quantized + int(q)
        if q:
            q_params, q_bytes = q_params + n, q_bytes + b
    inner = getattr(module, "_orig_mod", module)
    return ComponentStats(params=params, weight_bytes=nbytes, quantized_tensors=quantized,
                          class_name=type(inner).__name__, quantized_params=q_params, quantized_bytes=q_bytes)


def component_stats(pipe: Any) -> dict[str, ComponentStats]:
    import torch

    return {name: module_stats(comp) for name, comp in pipe.components.items()
            if isinstance(comp, torch.nn.Module)}


def disk_bytes(path: Path) -> int:
    """Bytes of all files under ``path`` (the model's size on disk)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)
