"""GGUF layers on CPU: dequantize a weight in row chunks into one compute-dtype buffer.

diffusers' ``GGUFLinear.forward_native`` dequantizes the whole weight at once: for Q4_1 the
shifted and masked nibbles (1 byte per value each), ``d * qs`` and ``+ m`` in float16 (2 bytes each)
and the copy to the compute dtype (2 bytes) are alive together, ~4-5 bytes per weight for the
largest layer at every call (a FLUX block's AdaLN linear is 3072×18432). Doing the same elementwise
operations on blocks of rows and writing each into a preallocated compute-dtype weight keeps ~one
bf16 weight plus one chunk's temporaries; the weight is bit-identical (same ops per element, the
same float16 -> compute-dtype rounding), so the layer's output is too. CUDA keeps diffusers' fused
kernels; a layer this cannot handle (not 2-D, an unknown type) takes diffusers' own path.
"""

from __future__ import annotations

from typing import Any

CHUNK_VALUES = 4 * 1024 * 1024  # weights dequantized per step (~24 MiB of temporaries for Q4_1)


def dequantize_rows(weight: Any, dtype: Any, chunk_values: int = CHUNK_VALUES) -> Any | None:
    """``weight`` (a GGUFParameter, rows = output features) dequantized into a new ``dtype``
    tensor a block of rows at a time; None where diffusers' whole-tensor path must be used."""
    import torch
    from diffusers.quantizers.gguf.utils import GGML_QUANT_SIZES, dequantize_functions

    quant_type = getattr(weight, "quant_type", None)
    if quant_type not in dequantize_functions or weight.dim() != 2:
        return None
    block_size, type_size = GGML_QUANT_SIZES[quant_type]
    raw = weight.as_tensor().view(torch.uint8)
    rows, row_bytes = raw.shape
    if row_bytes % type_size:
        return None
    cols = row_bytes // type_size * block_size
    out = torch.empty((rows, cols), dtype=dtype, device=raw.device)
    step = max(1, chunk_values // max(cols, 1))
    fn = dequantize_functions[quant_type]
    for start in range(0, rows, step):
        part = raw[start:start + step]
        out[start:start + step] = fn(part.reshape(-1, type_size), block_size, type_size).reshape(part.shape[0], cols)
    return out


_LAYER: type | None = None


def chunked_layer_class() -> type:
    """A ``GGUFLinear`` subclass whose ``forward_native`` (the non-CUDA path) dequantizes with
    :func:`dequantize_rows` (made lazily: diffusers is heavy)."""
    global _LAYER
    if _LAYER is None:
        import torch
        from diffusers.quantizers.gguf.utils import GGUFLinear

        class ChunkedGGUFLinear(GGUFLinear):
            def forward_native(self, inputs: Any) -> Any:
                weight = dequantize_rows(self.weight, self.compute_dtype)
                if weight is None:
                    return super().forward_native(inputs)
                bias = self.bias.to(self.compute_dtype) if self.bias is not None else None
                return torch.nn.functional.linear(inputs, weight, bias)

        _LAYER = ChunkedGGUFLinear
    return _LAYER


def use_chunked_dequant(model: Any) -> int:
    """Switch every plain diffusers ``GGUFLinear`` of ``model`` to :func:`chunked_layer_class`
    (same weights and CUDA path); returns how many layers were switched."""
    from diffusers.quantizers.gguf.utils import GGUFLinear

    layer = chunked_layer_class()
    count = 0
    for module in model.modules():
        if type(module) is GGUFLinear:
            module.__class__ = layer
            count += 1
    return count
