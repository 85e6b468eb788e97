"""GGUF K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): quantize and dequantize, vectorised numpy.

The ``gguf`` package can only *read* K-quants, so diffquant writes them itself. Every function
here follows ggml's reference quantizers (``quantize_row_qN_K_ref`` in llama.cpp's
``ggml/src/ggml-quants.c``, the bytes ``llama-quantize`` writes without an importance matrix):
the same search for sub-block scales and mins (``make_qkx2_quants``, ``make_q3_quants``,
``make_qx_quants``), the same super-block scale quantization and re-quantization, and the same
byte layout. The per-block loops of the C code become array operations over all blocks at once;
the only Python loops left run over search *steps* (at most 21) or, for Q3_K's coordinate
descent, over the 16 positions of a block -- never over blocks.

All arithmetic is float32 like the C code (numpy keeps Python scalars weak, so float32 stays
float32), fp16 conversions round to nearest even like ``GGML_FP32_TO_FP16``, and sums are
accumulated in the C loops' order (see ``_columns``): the bytes equal ggml's reference
quantizer's (built without FMA contraction), which the tests check against recorded hashes.

Input to ``quantize_*`` is a float32 array of shape ``(n_blocks, 256)``; output is uint8 of
shape ``(n_blocks, type_size)``. The byte layouts and the dequantizers live in ``kblocks``.
"""

from __future__ import annotations

import numpy as np

from diffquant.gguf_writer.kblocks import (
    DEQUANTIZERS,
    QK_K,
    TYPE_SIZES,
    pack_2bit,
    pack_bits_by_32,
    pack_nibbles_64,
    pack_scales_k4,
    pack_scales_q3,
)

__all__ = ["DEQUANTIZERS", "QK_K", "QUANTIZERS", "TYPE_SIZES"]

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)  # ggml: a group whose max |x| is below this is all zero


def _safe(den: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``den`` where ``ok``, else 1: divide without warnings, then mask the result."""
    return np.where(ok, den, F32(1))


def _argmax_abs(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Along ``axis``: the value with the largest magnitude (the first one on ties, like the C
    loops' strict ``>``) and that magnitude."""
    idx = np.expand_dims(np.abs(x).argmax(axis=axis), axis)
    val = np.take_along_axis(x, idx, axis=axis).squeeze(axis)
    return val, np.abs(val)


def _fp16_round(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fp16 bits as uint8 pairs, the fp16 value back as float32)."""
    h = v.astype(np.float16)
    return h.view(np.uint8).reshape(-1, 2), h.astype(F32)


def _columns(blocks: np.ndarray, n: int) -> np.ndarray:
    """(nb, 256) -> (n, nb * 256 / n): one column per n-value sub-block.

    The searches work on this transposed layout: per-sub-block values broadcast along long
    contiguous rows (fast in numpy), and ``sum(axis=0)`` adds the n positions in order, exactly
    like the C loops' float32 accumulators (numpy only sums pairwise along a contiguous axis).
    """
    return np.ascontiguousarray(blocks.reshape(-1, n).T)


def _rows(cols: np.ndarray, nb: int) -> np.ndarray:
    """Inverse of ``_columns`` for a (n, M) array of levels -> (nb, 256) uint8."""
    return np.ascontiguousarray(cols.T).reshape(nb, QK_K).astype(np.uint8)


# --------------------------------------------------------------------------- scale searches
# Each works on columns: x of shape (n, M) holds M sub-blocks of n values.


def make_qkx2_quants(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float,
                     nstep: int, use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric (scale, min) search of ggml's ``make_qkx2_quants`` for every column of ``x``.

    Tries ``nstep + 1`` inverse scales ``(nmax + rmin + rdelta*k) / (max - min)``, fits scale and
    min by weighted least squares to each rounding, and keeps the fit with the lowest weighted
    error (absolute when ``use_mad``, else squared). As in ggml, ``min`` is the best fit so far
    and shifts the next roundings. Returns (scale, -min, levels in [0, nmax] as float32).
    """
    fmax = F32(nmax)
    mn = np.minimum(x.min(axis=0), F32(0))
    mx = x.max(axis=0)
    sum_w = w.sum(axis=0)
    sum_x = (w * x).sum(axis=0)
    flat = mx == mn  # ggml: all levels 0, scale 0

    def levels(iscale: np.ndarray, mn: np.ndarray) -> np.ndarray:
        v = x - mn
        v *= iscale
        np.clip(v, F32(0), fmax, out=v)  # clip-then-round == round-then-clip for integer bounds
        return np.rint(v, out=v)

    def error(scale: np.ndarray, mn: np.ndarray, lv: np.ndarray) -> np.ndarray:
        diff = lv * scale
        diff += mn
        diff -= x
        if use_mad:
            np.abs(diff, out=diff)
        else:
            diff *= diff
        diff *= w
        return diff.sum(axis=0)

    def inverse_scale(numerator: np.float32, mn: np.ndarray) -> np.ndarray:
        rng = mx - mn
        ok = rng != 0  # a zero range only happens for flat columns, which stay at level 0
        return np.where(ok, numerator / _safe(rng, ok), F32(0))

    iscale = inverse_scale(fmax, mn)
    with np.errstate(divide="ignore"):
        scale = F32(1) / iscale
    best = error(np.where(flat, F32(0), scale), mn, levels(iscale, mn))
    # Remember how the best levels were made instead of copying them at every step.
    best_iscale, best_level_mn = iscale, mn
    for step in range(nstep + 1):
        iscale = inverse_scale(F32(rmin) + F32(rdelta) * F32(step) + fmax, mn)
        laux = levels(iscale, mn)
        wl = w * laux
        sum_l = wl.sum(axis=0)
        sum_l2 = (wl * laux).sum(axis=0)
        sum_xl = (wl * x).sum(axis=0)
        det = sum_w * sum_l2 - sum_l * sum_l
        ok = det > 0
        det = _safe(det, ok)
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        pos = this_min > 0  # a positive min is not representable: refit the scale alone
        this_min = np.where(pos, F32(0), this_min)
        this_scale = np.where(pos, sum_xl / _safe(sum_l2, sum_l2 != 0), this_scale)
        cur = error(this_scale, this_min, laux)
        better = ok & (cur < best) & ~flat
        best = np.where(better, cur, best)
        best_iscale = np.where(better, iscale, best_iscale)
        best_level_mn = np.where(better, mn, best_level_mn)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    scale = np.where(flat, F32(0), scale)
    return scale, -mn, levels(best_iscale, best_level_mn)


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric scale search of ggml's ``make_q3_quants(..., do_rmse=true)`` per column:
    round with ``-nmax / max``, then up to five rounds of coordinate descent that move one
    level at a time while the x^2-weighted least-squares fit improves.
    Returns (scale, levels in [0, 2*nmax - 1] as float32)."""
    n = x.shape[0]
    mx, amax = _argmax_abs(x, axis=0)
    zero = amax < GROUP_MAX_EPS
    lo, hi = F32(-nmax), F32(nmax - 1)
    lv = np.clip(np.rint((F32(-nmax) / _safe(mx, ~zero)) * x), lo, hi)
    w = x * x
    wx = w * x
    sumlx = (wx * lv).sum(axis=0)
    suml2 = (w * lv * lv).sum(axis=0)
    for _ in range(5):  # (overflow to inf for huge inputs behaves as in C; see quantize.py)
        changed = False
        for i in range(n):  # sequential in ggml too: each move updates the sums for the next
            w_i, wx_i, l_i = w[i], wx[i], lv[i]
            slx = sumlx - wx_i * l_i
            pos = slx > 0
            sl2 = suml2 - w_i * l_i * l_i
            new_l = np.clip(np.rint(x[i] * sl2 / _safe(slx, pos)), lo, hi)
            move = pos & (new_l != l_i)
            slx = slx + wx_i * new_l
            sl2 = sl2 + w_i * new_l * new_l
            move &= (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            if move.any():
                changed = True
                lv[i] = np.where(move, new_l, l_i)
                sumlx = np.where(move, slx, sumlx)
                suml2 = np.where(move, sl2, suml2)
        if not changed:  # a round without moves is a fixed point for every column
            break
    scale = np.where(suml2 > 0, sumlx / _safe(suml2, suml2 > 0), F32(0))
    lv += F32(nmax)
    lv[:, zero] = 0
    scale[zero] = 0
    return scale, lv


def make_qx_quants_rmse1(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric scale search of ggml's ``make_qx_quants(..., rmse_type=1, qw=NULL)`` per
    column: inverse scales ``-(nmax + 0.1*k)/max`` for k in -9..9, weights x^2, keep the one
    that maximises ``sumlx^2 / suml2`` (the least-squares fit's error reduction).
    Returns (scale, levels in [0, 2*nmax - 1] as float32)."""
    mx, amax = _argmax_abs(x, axis=0)
    zero = amax < GROUP_MAX_EPS
    lo, hi = F32(-nmax), F32(nmax - 1)
    w = x * x
    wx = w * x
    den = _safe(mx, ~zero)

    def levels(iscale: np.ndarray) -> np.ndarray:
        v = iscale * x
        np.rint(v, out=v)
        return np.clip(v, lo, hi, out=v)

    def sums(lv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (wx * lv).sum(axis=0), (w * lv * lv).sum(axis=0)

    best_iscale = F32(-nmax) / den
    sumlx, suml2 = sums(levels(best_iscale))
    scale = np.where(suml2 != 0, sumlx / _safe(suml2, suml2 != 0), F32(0))
    best = scale * sumlx
    for k in range(-9, 10):
        if k == 0:
            continue
        iscale = -(F32(nmax) + F32(0.1) * F32(k)) / den
        sumlx, suml2 = sums(levels(iscale))
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        scale = np.where(better, sumlx / _safe(suml2, suml2 > 0), scale)
        best = np.where(better, scale * sumlx, best)
        best_iscale = np.where(better, iscale, best_iscale)
    lv = levels(best_iscale)
    lv += F32(nmax)
    lv[:, zero] = 0
    scale[zero] = 0
    return scale, lv


# --------------------------------------------------------------------------- quantizers


def _requantize(x: np.ndarray, d: np.ndarray, dm: np.ndarray | None, lo: float, hi: float,
                lv: np.ndarray) -> np.ndarray:
    """Round again with the *stored* (fp16 x 4/6-bit) sub-block scales, as ggml does. Columns
    whose stored scale is 0 keep their search levels. x, lv: (n, M); d, dm: (M,)."""
    nz = d != 0
    num = x if dm is None else x + dm
    q = np.clip(np.rint(num / _safe(d, nz)), F32(lo), F32(hi))
    return np.where(nz, q, lv)


def _superblock_max(v: np.ndarray, nb: int) -> np.ndarray:
    """Largest sub-block scale (or min) per super-block, at least 0 as ggml starts from 0."""
    return np.maximum(v.reshape(nb, -1).max(axis=1), F32(0))


def _quantize_levels(v: np.ndarray, vmax: np.ndarray, top: int) -> np.ndarray:
    """Sub-block scales (nb, k) -> integers 0..top relative to the super-block's max."""
    inv = np.where(vmax > 0, F32(top) / _safe(vmax, vmax > 0), F32(0))
    return np.clip(np.rint(inv[:, None] * v), 0, top).astype(np.uint8)


def quantize_q2_k(blocks: np.ndarray) -> np.ndarray:
    nb = blocks.shape[0]
    x = _columns(blocks, 16)
    scales, mins, lv = make_qkx2_quants(x, np.abs(x), 3, -0.5, 0.1, 15, use_mad=True)
    max_scale, max_min = _superblock_max(scales, nb), _superblock_max(mins, nb)
    ls = _quantize_levels(scales.reshape(nb, 16), max_scale, 15)
    lm = _quantize_levels(mins.reshape(nb, 16), max_min, 15)
    d_bytes, d = _fp16_round(max_scale / F32(15))
    m_bytes, dmin = _fp16_round(max_min / F32(15))
    lv = _requantize(x, (d[:, None] * ls).ravel(), (dmin[:, None] * lm).ravel(), 0, 3, lv)
    return np.concatenate([ls | (lm << 4), pack_2bit(_rows(lv, nb)), d_bytes, m_bytes], axis=1)


def quantize_q3_k(blocks: np.ndarray) -> np.ndarray:
    nb = blocks.shape[0]
    x = _columns(blocks, 16)
    scales, lv = make_q3_quants(x, 4)
    scales = scales.reshape(nb, 16)
    max_scale, _ = _argmax_abs(scales, axis=1)
    has = max_scale != 0
    iscale = F32(-32) / _safe(max_scale, has)
    l6 = np.clip(np.rint(iscale[:, None] * scales), -32, 31) + 32
    l6 = np.where(has[:, None], l6, 0).astype(np.uint8)  # no scale at all: the 12 bytes stay 0
    d_bytes, d = _fp16_round(np.where(has, F32(1) / iscale, F32(0)))
    sc = l6.astype(F32) - F32(32)  # the scales as stored
    lv = _requantize(x, (d[:, None] * sc).ravel(), None, -4, 3, lv - F32(4)) + F32(4)
    L = _rows(lv, nb)
    high = L > 3
    hmask = pack_bits_by_32(high.astype(np.uint8), 8)
    qs = pack_2bit(np.where(high, L - 4, L).astype(np.uint8))
    return np.concatenate([hmask, qs, pack_scales_q3(l6), d_bytes], axis=1)


def _quantize_k4_common(blocks: np.ndarray, nmax: int, rmin: float, nstep: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Shared part of Q4_K and Q5_K: eight 32-value sub-blocks with 6-bit scales and mins.
    Returns (the 16 leading bytes: d, dmin, packed scales; levels (nb, 256) uint8)."""
    nb = blocks.shape[0]
    x = _columns(blocks, 32)
    av_x = np.sqrt((x * x).sum(axis=0) / F32(32))
    w = av_x + np.abs(x)
    scales, mins, lv = make_qkx2_quants(x, w, nmax, rmin, 0.1, nstep, use_mad=False)
    max_scale, max_min = _superblock_max(scales, nb), _superblock_max(mins, nb)
    ls = _quantize_levels(scales.reshape(nb, 8), max_scale, 63)
    lm = _quantize_levels(mins.reshape(nb, 8), max_min, 63)
    d_bytes, d = _fp16_round(max_scale / F32(63))
    m_bytes, dmin = _fp16_round(max_min / F32(63))
    lv = _requantize(x, (d[:, None] * ls).ravel(), (dmin[:, None] * lm).ravel(), 0, nmax, lv)
    head = np.concatenate([d_bytes, m_bytes, pack_scales_k4(ls, lm)], axis=1)
    return head, _rows(lv, nb)


def quantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    head, L = _quantize_k4_common(blocks, 15, -1.0, 20)
    return np.concatenate([head, pack_nibbles_64(L)], axis=1)


def quantize_q5_k(blocks: np.ndarray) -> np.ndarray:
    head, L = _quantize_k4_common(blocks, 31, -0.5, 15)
    qh = pack_bits_by_32(L >> 4, 8)
    return np.concatenate([head, qh, pack_nibbles_64(L & 0xF)], axis=1)


def quantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    nb = blocks.shape[0]
    x = _columns(blocks, 16)
    scales, lv = make_qx_quants_rmse1(x, 32)
    scales = scales.reshape(nb, 16)
    max_scale, max_abs = _argmax_abs(scales, axis=1)
    zero = max_abs < GROUP_MAX_EPS  # ggml writes an all-zero block
    iscale = F32(-128) / _safe(max_scale, ~zero)
    d_bytes, d = _fp16_round(F32(1) / iscale)
    sc = np.minimum(np.rint(iscale[:, None] * scales), F32(127))
    lv = _requantize(x, (d[:, None] * sc).ravel(), None, -32, 31, lv - F32(32)) + F32(32)
    L = _rows(lv, nb).reshape(nb, 2, 4, 32)
    lo = L & 0xF
    ql = np.concatenate([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2)
    hi = L >> 4
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    out = np.concatenate([ql.reshape(nb, 128), qh.reshape(nb, 64),
                          sc.astype(np.int8).view(np.uint8), d_bytes], axis=1)
    out[zero] = 0
    return out


QUANTIZERS = {"Q2_K": quantize_q2_k, "Q3_K": quantize_q3_k, "Q4_K": quantize_q4_k,
              "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k}
