"""Swap diffusers' GGUF linear layers for ones that dequantize with the compiled kernel into one
scratch buffer shared by every layer, then call torch's GEMM.

The layer keeps its ``GGUFParameter`` (the packed blocks) and stays a ``GGUFLinear`` (its class is
swapped for a subclass), so state dicts, the GGUF export, group offload hooks and diffusers' own
GGUF utilities see the same module as before. Weights are never kept dequantized: the scratch
holds one layer's weight at a time and is overwritten by the next layer.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from diffquant.lowbit.kernel import SUPPORTED_QTYPES, dequantize_into, gemv_into

_BF16 = 30  # gguf.GGMLQuantizationType.BF16: the bytes are already the bf16 weight
# Calls with at most this many tokens (FLUX's modulation layers: one per image) multiply the blocks
# directly (kernel.gemv_into) instead of writing the weight buffer: the dequantization would cost
# more than the product. Same weight values, another float32 summation order than oneDNN's GEMM
# (outputs equal after rounding but for ~1 in 10^4, one bf16 ulp apart). 0 turns it off; at most 8.
GEMV_MAX_TOKENS = min(8, int(os.environ.get("DIFFQUANT_LOWBIT_GEMV_TOKENS", "8")))
_QTYPE_IDS = frozenset(SUPPORTED_QTYPES.values()) | {_BF16}
_scratch = threading.local()  # per thread: {dtype: flat tensor}, grown to the largest layer


def scratch_weight(weight: Any, shape: tuple[int, int], dtype: Any) -> Any:
    """The dequantized ``weight`` (a GGUFParameter) in the shared scratch, as a (out, in) tensor."""
    import torch

    numel = shape[0] * shape[1]
    if int(weight.quant_type) == _BF16:
        # diffusers widens these bits to float32 and rounds back (exact): a view is the same weight.
        with torch._C.DisableTorchFunctionSubclass():
            bits = weight.view(torch.uint8).reshape(-1).view(torch.bfloat16).view(shape)
        return bits if dtype == torch.bfloat16 else bits.to(dtype)
    if torch.is_grad_enabled():
        # Autograd would keep a view of the scratch for backward while the next layer overwrites it.
        out = torch.empty(numel, dtype=dtype)
    else:
        buffers = getattr(_scratch, "buffers", None)
        if buffers is None:
            buffers = _scratch.buffers = {}
        out = buffers.get(dtype)
        if out is None or out.numel() < numel:
            out = buffers[dtype] = torch.empty(numel, dtype=dtype)
        out = out[:numel]
    with torch._C.DisableTorchFunctionSubclass():
        blocks = weight.view(torch.uint8).reshape(-1)
    dequantize_into(blocks, int(weight.quant_type), out)
    return out.view(shape)


def few_token_linear(weight: Any, inputs: Any, bias: Any, out_features: int, dtype: Any) -> Any:
    """``linear(inputs, weight, bias)`` for a few tokens, straight from the blocks (no weight buffer)."""
    import torch

    x = inputs.reshape(-1, inputs.shape[-1]).to(torch.float32).contiguous()
    y = torch.empty(x.shape[0], out_features, dtype=torch.float32)
    with torch._C.DisableTorchFunctionSubclass():
        blocks = weight.view(torch.uint8).reshape(-1)
    gemv_into(blocks, int(weight.quant_type), x, y, dtype == torch.bfloat16)
    if bias is not None:
        y += bias.to(torch.float32)
    return y.to(dtype).reshape(*inputs.shape[:-1], out_features)


def release_scratch() -> None:
    """Free this thread's scratch buffers (the next call allocates them again)."""
    _scratch.buffers = {}


def kernel_layer_class() -> type:
    """GGUFLinear subclass whose CPU forward uses the kernel (built lazily: diffusers is heavy)."""
    global _LAYER
    if _LAYER is None:
        _LAYER = _make_layer_class()
    return _LAYER


_LAYER: type | None = None


def _make_layer_class() -> type:
    import torch
    from diffusers.quantizers.gguf.utils import GGUFLinear

    # torch.compile: the kernel writes a buffer shared across layers; keep it out of graphs.
    dequantize = torch.compiler.disable(scratch_weight)
    few_tokens = torch.compiler.disable(few_token_linear)

    class KernelGGUFLinear(GGUFLinear):
        """GGUFLinear that dequantizes on CPU with diffquant's kernel into a shared buffer."""

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            weight = self.weight
            dtype = self.compute_dtype or inputs.dtype
            if (inputs.device.type != "cpu" or weight.device.type != "cpu"
                    or getattr(weight, "quant_type", None) not in _QTYPE_IDS
                    or dtype not in (torch.bfloat16, torch.float32)):
                return super().forward(inputs)  # GPU, unquantized or fp16: diffusers' path
            tokens = inputs.numel() // max(1, inputs.shape[-1])
            if (0 < tokens <= GEMV_MAX_TOKENS and int(weight.quant_type) != _BF16 and inputs.dtype == dtype
                    and not torch.is_grad_enabled()):
                return few_tokens(weight, inputs, self.bias, self.out_features, dtype)
            w = dequantize(weight, (self.out_features, self.in_features), dtype)
            bias = self.bias.to(dtype) if self.bias is not None else None
            return torch.nn.functional.linear(inputs, w, bias)

    return KernelGGUFLinear


def use_cpu_kernel(model: Any) -> int:
    """Make every GGUF linear layer of ``model`` with a kernel-supported type use the kernel;
    returns how many layers were switched. Builds the kernel now, so that a missing compiler is
    reported at load time, not in the middle of a generation."""
    from diffusers.quantizers.gguf.utils import GGUFLinear

    from diffquant.lowbit.kernel import ops

    ops()
    layer = kernel_layer_class()
    switched = 0
    for module in model.modules():
        if isinstance(module, GGUFLinear) and getattr(module.weight, "quant_type", None) in _QTYPE_IDS:
            module.__class__ = layer
            switched += 1
    return switched
