"""Quant-type dispatch: turn float rows into GGUF tensor bytes, chunk by chunk.

K-quants come from ``kquants`` (diffquant's own, bit-identical to ggml's reference); the older
block types come from the ``gguf`` package, whose quantizers already write ggml's bytes;
F32/F16/BF16 are plain casts. Tensors are processed in chunks of whole blocks so that the
float32 working set stays small (and in cache) whatever the tensor's size.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from diffquant.errors import DiffquantError
from diffquant.gguf_writer import kquants

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Highest precision first; the order --help and errors list them in.
SUPPORTED_TYPES: tuple[str, ...] = (
    "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0",
    "Q3_K", "Q2_K",
)
K_TYPES = frozenset(kquants.QUANTIZERS)
FLOAT_TYPES = frozenset({"F32", "F16", "BF16"})

# (values per block, bytes per block), as ggml-common.h / gguf.GGML_QUANT_SIZES.
BLOCK: dict[str, tuple[int, int]] = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2),
    "Q8_0": (32, 34), "Q5_1": (32, 24), "Q5_0": (32, 22), "Q4_1": (32, 20), "Q4_0": (32, 18),
    **{name: (kquants.QK_K, size) for name, size in kquants.TYPE_SIZES.items()},
}

# About 64k values per chunk: big enough that numpy's per-call overhead is small, small enough
# to stay in cache (measured: 256 super-blocks is the sweet spot for the K-quant searches).
CHUNK_VALUES = 1 << 16


def normalize_type(name: str) -> str:
    """'q4_k' -> 'Q4_K'; anything unknown is a user error listing the valid types."""
    key = name.strip().upper()
    if key not in BLOCK:
        # Suggestions compare the upper-cased spelling: 'q4k' -> 'Q4_K'.
        raise DiffquantError(f"Unknown GGUF quant type {name!r}.", choices=SUPPORTED_TYPES, given=key,
                             hint="pick one of the listed types, e.g. --type Q4_K")
    return key


def bits_per_weight(qtype: str) -> float:
    values, nbytes = BLOCK[qtype]
    return 8.0 * nbytes / values


def can_quantize(qtype: str, row_size: int) -> bool:
    """GGUF blocks never straddle rows: a row must hold a whole number of blocks."""
    return row_size % BLOCK[qtype][0] == 0


def nbytes(qtype: str, shape: tuple[int, ...]) -> int:
    values, size = BLOCK[qtype]
    n = int(np.prod(shape, dtype=np.int64))
    return n // values * size


def _gguf_quantizer(qtype: str) -> Callable[[np.ndarray], np.ndarray]:
    """The gguf package's block quantizer for ``qtype``. Called on our chunks of blocks
    directly: ``gguf.quants.quantize`` would split each chunk again into 16-row groups, which
    for rows of one block each costs 8x in call overhead."""
    import gguf

    return getattr(gguf.quants, qtype).quantize_blocks


def _block_quantizer(qtype: str) -> Callable[[np.ndarray], np.ndarray]:
    """A function (n_blocks, block_values) float32 -> (n_blocks, block_bytes) uint8."""
    if qtype in K_TYPES:
        return kquants.QUANTIZERS[qtype]
    return _gguf_quantizer(qtype)


def _numpy_source(t: torch.Tensor) -> tuple[np.ndarray, bool]:
    """A zero-copy numpy view of ``t`` (bf16 as its uint16 bit patterns) and whether it is bf16.

    Conversions to float32 then happen in numpy, chunk by chunk: torch's multi-threaded ``.to``
    costs more in thread hand-offs than it saves on chunks this small (and far more on a busy
    machine)."""
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16), True
    if t.dtype not in (torch.float16, torch.float32, torch.float64):
        t = t.to(torch.float32)
    return t.numpy(), False


def _as_float32(a: np.ndarray, is_bf16: bool) -> np.ndarray:
    if is_bf16:
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32, copy=False)


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (round to nearest even, NaN kept quiet), via the gguf
    package, which does it exactly as ggml."""
    import gguf

    return gguf.quants.BF16.quantize_blocks(x.reshape(-1, 1)).view(np.uint16).reshape(x.shape)


def quantize_tensor(t: torch.Tensor, qtype: str, threads: int | None = None) -> np.ndarray:
    """Quantize a torch tensor along its last dimension; returns the GGUF bytes as a uint8
    array of shape ``(*t.shape[:-1], bytes_per_row)`` (F32/F16 keep their float dtype).

    Only one chunk is converted to float32 at a time, so a bf16 tensor never needs a full
    float32 copy. Non-finite values are refused (a NaN scale would poison a whole block).
    ``threads`` chunks are quantized at once (default: ``resolve_threads``).
    """
    shape = tuple(t.shape)
    if not shape:
        raise ValueError("0-d tensors must be reshaped to (1,) first")
    src, is_bf16 = _numpy_source(t)
    if qtype == "BF16":
        if is_bf16:  # bf16 -> BF16: an exact copy
            return src.view(np.uint8).reshape(*shape[:-1], shape[-1] * 2)
        flat, bits = src.reshape(-1), np.empty(src.size, dtype=np.uint16)
        for start in range(0, flat.size, CHUNK_VALUES):  # chunks keep the uint64 temporaries in cache
            bits[start:start + CHUNK_VALUES] = _bf16_bits(_as_float32(flat[start:start + CHUNK_VALUES], False))
        return bits.view(np.uint8).reshape(*shape[:-1], shape[-1] * 2)
    if qtype in ("F32", "F16"):
        x = _as_float32(src, is_bf16)
        if qtype == "F32":
            return x
        with np.errstate(over="ignore"):
            out = x.astype(np.float16)
        if not np.isfinite(out).all() and np.isfinite(x).all():
            raise ValueError("values overflow float16 (|x| > 65504); keep this tensor as BF16 or F32")
        return out
    values, size = BLOCK[qtype]
    if shape[-1] % values:
        raise ValueError(f"row size {shape[-1]} is not a multiple of {qtype}'s block size {values}")
    flat = src.reshape(-1)
    n_blocks = flat.size // values
    out = np.empty((n_blocks, size), dtype=np.uint8)
    step = max(1, CHUNK_VALUES // values)
    quantize_blocks = _block_quantizer(qtype)

    def work(start: int) -> None:
        stop = min(n_blocks, start + step)
        # ggml's float arithmetic overflows to inf/0 for extreme inputs and compares the
        # result; numpy would warn about each case (errstate is per thread, so set it here).
        with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
            chunk = _as_float32(flat[start * values:stop * values], is_bf16).reshape(-1, values)
            if not np.isfinite(chunk).all():
                raise ValueError("tensor holds NaN or infinite values")
            out[start:stop] = quantize_blocks(chunk)

    starts = range(0, n_blocks, step)
    workers = min(resolve_threads(threads), len(starts))
    if workers <= 1:
        for start in starts:
            work(start)
    else:
        # numpy releases the GIL inside each array operation, so chunks run in parallel.
        with ThreadPoolExecutor(workers, thread_name_prefix="gguf-quant") as pool:
            for _ in pool.map(work, starts):
                pass
    return out.reshape(*shape[:-1], shape[-1] // values * size)


def resolve_threads(threads: int | None) -> int:
    """``None``: $DIFFQUANT_GGUF_THREADS, else every CPU this process may use."""
    if threads is None:
        env = os.environ.get("DIFFQUANT_GGUF_THREADS")
        threads = int(env) if env else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
    return max(1, int(threads))


def quantize_array(x: np.ndarray, qtype: str, threads: int | None = None) -> np.ndarray:
    """numpy convenience wrapper around ``quantize_tensor`` (float32 input)."""
    import torch

    return quantize_tensor(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), qtype, threads)


def dequantize_array(data: np.ndarray, qtype: str) -> np.ndarray:
    """GGUF bytes (as written by ``quantize_tensor``) -> float32 of the logical shape.
    K-quants use diffquant's own dequantizers; the rest use the ``gguf`` package."""
    if qtype in ("F32", "F16"):
        return data.astype(np.float32)
    if qtype == "BF16":
        bits = np.ascontiguousarray(data).view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32)
    values, size = BLOCK[qtype]
    blocks = np.ascontiguousarray(data).reshape(-1, size)
    if qtype in K_TYPES:
        flat = kquants.DEQUANTIZERS[qtype](blocks)
    else:
        import gguf

        flat = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[qtype])
    return flat.reshape(*data.shape[:-1], data.shape[-1] // size * values)
