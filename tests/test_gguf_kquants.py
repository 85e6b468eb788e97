"""K-quant numerics: valid GGUF blocks, ggml's reference bytes, and llama.cpp's published errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from diffquant.gguf_writer import (
    SUPPORTED_TYPES,
    dequantize_array,
    kquants,
    quantize_array,
)

K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

# Relative RMS error of ggml's own reference quantizers (no imatrix) on 256x4096 float32 data,
# numpy default_rng(0): standard normal / Student-t df=3 (docs: CPU-FACTS, "GGUF reference figures").
LLAMA_CPP_REL_RMS = {
    "Q8_0": (0.00535, 0.00848), "Q5_0": (0.0427, 0.0662), "Q5_1": (0.0378, 0.0486),
    "Q4_0": (0.0859, 0.1280), "Q4_1": (0.0782, 0.1007), "Q2_K": (0.2966, 0.3514),
    "Q3_K": (0.1507, 0.1894), "Q4_K": (0.0714, 0.0927), "Q5_K": (0.0361, 0.0469),
    "Q6_K": (0.0177, 0.0256),
}

# sha256 of the bytes that ggml's quantize_row_qN_K_ref (transcribed from llama.cpp's
# ggml-quants.c, gcc -O2 -ffp-contract=off) writes for ``edge_case_rows()``.
GGML_REFERENCE_SHA256 = {
    "Q2_K": "b7722ee42844e28c3285f654e0db0b355c4ab979683e8a44c7a7a3555348778a",
    "Q3_K": "d6610fd340bcf93fb81ad1688db242bb99b66014465e5452ea6f0ef9f442d9a0",
    "Q4_K": "5a9c55ed069c0e60d9ea36c50184f65190da989598323872a7d62e9342122e19",
    "Q5_K": "7e3f27385e504a8147725f2971e4905ec2e1e771bbea25e57b5a86b58e28f8ea",
    "Q6_K": "0744ecbddcb6979ad7de1008a855031f3fa7198fe676341b360ad2a143226b1a",
}


def edge_case_rows() -> np.ndarray:
    """Rows of 1024 values that exercise every branch: zeros, constants, one-signed blocks,
    denormal-small and huge values, outliers, repeated values, and Gaussian/Student-t data."""
    rng = np.random.default_rng(123)
    rows = [np.zeros(1024), np.full(1024, 0.5), np.full(1024, -0.25), -np.abs(rng.standard_normal(1024)),
            np.abs(rng.standard_normal(1024)), rng.standard_normal(1024) * 1e-20,
            rng.standard_normal(1024) * 1e4,
            np.where(rng.random(1024) < 0.01, 50.0, rng.standard_normal(1024) * 0.01),
            np.repeat(rng.standard_normal(64), 16), np.tile(np.linspace(-1, 1, 16), 64),
            rng.standard_normal(1024) * np.repeat(rng.lognormal(0, 4, 64), 16)]
    x = np.stack(rows).astype(np.float32)
    x[1, :16] = 0
    x[3, ::7] = 0
    return np.concatenate([x, np.random.default_rng(0).standard_normal((16, 1024)).astype(np.float32),
                           np.random.default_rng(0).standard_t(3, (16, 1024)).astype(np.float32)])


@pytest.fixture(scope="module")
def test_data() -> dict[str, np.ndarray]:
    return {"normal": np.random.default_rng(0).standard_normal((256, 4096)).astype(np.float32),
            "student_t3": np.random.default_rng(0).standard_t(3, (256, 4096)).astype(np.float32)}


@pytest.fixture(scope="module")
def roundtrips(test_data: dict[str, np.ndarray]) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """(type, data name) -> (bytes, our dequantized floats), computed once for the module."""
    out = {}
    for qtype in LLAMA_CPP_REL_RMS:
        for name, x in test_data.items():
            data = quantize_array(x, qtype)
            out[qtype, name] = (data, dequantize_array(data, qtype))
    return out


@pytest.mark.parametrize("qtype", SUPPORTED_TYPES)
def test_bytes_are_valid_gguf_blocks(qtype: str) -> None:
    """Our dequantization and the gguf package's agree exactly, on data with all edge cases."""
    x = edge_case_rows()
    data = quantize_array(x, qtype)
    gtype = gguf.GGMLQuantizationType[qtype]
    assert data.shape == tuple(gguf.quant_shape_to_byte_shape(x.shape, gtype)) or qtype in ("F32", "F16")
    ours = dequantize_array(data, qtype)
    theirs = gguf.quants.dequantize(data.view(np.uint8) if qtype in ("F32", "F16") else data, gtype)
    np.testing.assert_array_equal(ours, theirs.reshape(ours.shape))
    assert np.isfinite(ours).all()


@pytest.mark.parametrize("qtype", K_TYPES)
def test_kquant_bytes_equal_ggml_reference(qtype: str) -> None:
    data = quantize_array(edge_case_rows(), qtype)
    assert hashlib.sha256(data.tobytes()).hexdigest() == GGML_REFERENCE_SHA256[qtype]


@pytest.mark.parametrize("qtype", K_TYPES)
def test_kquant_dequantize_matches_gguf_package(qtype: str, roundtrips: dict) -> None:
    data, ours = roundtrips[qtype, "normal"]
    theirs = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[qtype])
    np.testing.assert_array_equal(ours, theirs)


def _rel_rms(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((x - y) ** 2)) / np.sqrt(np.mean(x**2)))


@pytest.mark.parametrize("dist_index,dist", [(0, "normal"), (1, "student_t3")])
def test_errors_within_llama_cpp_reference(dist_index: int, dist: str, test_data: dict, roundtrips: dict) -> None:
    x = test_data[dist]
    errors = {q: _rel_rms(x, roundtrips[q, dist][1]) for q in LLAMA_CPP_REL_RMS}
    for qtype, err in errors.items():
        assert err <= 1.05 * LLAMA_CPP_REL_RMS[qtype][dist_index], (qtype, dist, err)
    order = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"]
    assert [errors[q] for q in order] == sorted((errors[q] for q in order), reverse=True), errors


def test_all_zero_and_constant_blocks_roundtrip_exactly() -> None:
    x = np.zeros((2, 512), np.float32)
    x[1] = 0.5
    for qtype in K_TYPES:
        y = dequantize_array(quantize_array(x, qtype), qtype)
        np.testing.assert_allclose(y[0], 0.0)
        np.testing.assert_allclose(y[1], 0.5, rtol=2e-3)  # fp16 super-block scale


def test_type_sizes_match_gguf() -> None:
    for qtype, size in kquants.TYPE_SIZES.items():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]] == (256, size)


def test_nonfinite_input_is_refused() -> None:
    x = np.ones((1, 256), np.float32)
    x[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        quantize_array(x, "Q4_K")


def test_threads_do_not_change_bytes() -> None:
    x = np.random.default_rng(5).standard_normal((96, 2048)).astype(np.float32)
    for qtype in ("Q4_K", "Q8_0"):
        assert np.array_equal(quantize_array(x, qtype, threads=1), quantize_array(x, qtype, threads=3))
