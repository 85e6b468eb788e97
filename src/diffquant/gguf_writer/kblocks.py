"""Byte layouts of GGUF K-quant blocks (ggml-common.h) and their dequantization.

Packing helpers used by ``kquants`` and dequantizers that mirror ``gguf.quants`` (and ggml)
operation for operation, so both give identical floats for the same bytes.
"""

from __future__ import annotations

import numpy as np

QK_K = 256
F32 = np.float32

# Bytes per 256-value super-block, as in ggml-common.h.
TYPE_SIZES = {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}


# --------------------------------------------------------------------------- bit packing


def pack_2bit(L: np.ndarray) -> np.ndarray:
    """(nb, 256) levels 0..3 -> (nb, 64): byte l of each 128-value half holds values
    l, l+32, l+64, l+96 in bits 0-1, 2-3, 4-5, 6-7."""
    q = L.reshape(-1, 2, 4, 32)
    out = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
    return out.reshape(-1, 64)


def pack_nibbles_64(L: np.ndarray) -> np.ndarray:
    """(nb, 256) levels 0..15 -> (nb, 128): each 64-value chunk -> 32 bytes, low nibble the
    first 32 values, high nibble the next 32."""
    q = L.reshape(-1, 4, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def pack_bits_by_32(bits: np.ndarray, n_planes: int) -> np.ndarray:
    """(nb, 32 * n_planes) 0/1 -> (nb, 32): value 32*p + m sets bit p of byte m."""
    b = bits.reshape(-1, n_planes, 32)
    out = np.zeros((b.shape[0], 32), dtype=np.uint8)
    for p in range(n_planes):
        out |= b[:, p] << p
    return out


def pack_scales_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins -> the 12-byte ``scales`` field of Q4_K/Q5_K."""
    out = np.empty((ls.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    out[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return out


def unpack_scales_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``_pack_scales_k4`` (ggml's ``get_scale_min_k4`` for j = 0..7)."""
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc, mn


def pack_scales_q3(l: np.ndarray) -> np.ndarray:
    """Sixteen 6-bit scales (0..63) -> Q3_K's 12 bytes: low nibbles of 0-7 and 8-15 share
    bytes 0-7, the 2-bit high parts go to bytes 8-11 (scale j at byte 8 + j%4, bits 2*(j//4))."""
    out = np.empty((l.shape[0], 12), dtype=np.uint8)
    low = l & 0xF
    out[:, 0:8] = low[:, 0:8] | (low[:, 8:16] << 4)
    high = (l >> 4).reshape(-1, 4, 4)
    out[:, 8:12] = high[:, 0] | (high[:, 1] << 2) | (high[:, 2] << 4) | (high[:, 3] << 6)
    return out


def unpack_scales_q3(s: np.ndarray) -> np.ndarray:
    low = np.concatenate([s[:, 0:8] & 0xF, s[:, 0:8] >> 4], axis=1)
    high = (s[:, 8:12][:, None, :] >> (2 * np.arange(4, dtype=np.uint8))[None, :, None]) & 3
    return low | (high.reshape(-1, 16) << 4)


# --------------------------------------------------------------------------- dequantizers


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(F32)


def dequantize_q2_k(b: np.ndarray) -> np.ndarray:
    nb = b.shape[0]
    sc, qs, d, dmin = b[:, 0:16], b[:, 16:80], _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (sc & 0xF).astype(F32)).reshape(nb, 16, 1)
    ml = (dmin * (sc >> 4).astype(F32)).reshape(nb, 16, 1)
    q = (qs.reshape(nb, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)) & 3
    return (dl * q.reshape(nb, 16, 16).astype(F32) - ml).reshape(nb, QK_K)


def dequantize_q3_k(b: np.ndarray) -> np.ndarray:
    nb = b.shape[0]
    hmask, qs, s, d = b[:, 0:32], b[:, 32:96], b[:, 96:108], _f16(b[:, 108:110])
    sc = (unpack_scales_q3(s).astype(np.int8) - np.int8(32)).astype(F32)
    dl = (d * sc).reshape(nb, 16, 1)
    ql = (qs.reshape(nb, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)) & 3
    qh = (hmask.reshape(nb, 1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)) & 1
    q = ql.reshape(nb, 16, 16).astype(np.int8) - ((qh.reshape(nb, 16, 16) ^ 1) << 2).astype(np.int8)
    return (dl * q.astype(F32)).reshape(nb, QK_K)


def _dequantize_k4(b: np.ndarray, q: np.ndarray) -> np.ndarray:
    nb = b.shape[0]
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = unpack_scales_k4(b[:, 4:16])
    dl = (d * sc.astype(F32)).reshape(nb, 8, 1)
    ml = (dmin * mn.astype(F32)).reshape(nb, 8, 1)
    return (dl * q.reshape(nb, 8, 32).astype(F32) - ml).reshape(nb, QK_K)


def unpack_nibbles_64(qs: np.ndarray) -> np.ndarray:
    nb = qs.shape[0]
    return ((qs.reshape(nb, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)) & 0xF
            ).reshape(nb, QK_K)


def dequantize_q4_k(b: np.ndarray) -> np.ndarray:
    return _dequantize_k4(b, unpack_nibbles_64(b[:, 16:144]))


def dequantize_q5_k(b: np.ndarray) -> np.ndarray:
    nb = b.shape[0]
    qh = (b[:, 16:48].reshape(nb, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
    return _dequantize_k4(b, unpack_nibbles_64(b[:, 48:176]) | (qh.reshape(nb, QK_K) << 4))


def dequantize_q6_k(b: np.ndarray) -> np.ndarray:
    nb = b.shape[0]
    ql, qh, sc, d = b[:, 0:128], b[:, 128:192], b[:, 192:208], _f16(b[:, 208:210])
    dl = (d * np.ascontiguousarray(sc).view(np.int8).astype(F32)).reshape(nb, 16, 1)
    lo = (ql.reshape(nb, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)) & 0xF
    hi = (qh.reshape(nb, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)) & 3
    q = (lo.reshape(nb, 2, 4, 32) | (hi << 4)).astype(np.int8) - np.int8(32)
    return (dl * q.reshape(nb, 16, 16).astype(F32)).reshape(nb, QK_K)


DEQUANTIZERS = {"Q2_K": dequantize_q2_k, "Q3_K": dequantize_q3_k, "Q4_K": dequantize_q4_k,
                "Q5_K": dequantize_q5_k, "Q6_K": dequantize_q6_k}
