"""The CPU low-bit kernel: for every GGUF type it runs, its dequantized blocks equal
``gguf.quants.dequantize`` bit for bit (float32) and torch's round-to-nearest-even of it (bf16),
in every instruction-set variant this CPU has; blocks come from diffquant's own GGUF writer."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

from diffquant.gguf_writer import quantize_array
from diffquant.lowbit import KERNEL_TYPES
from diffquant.lowbit import kernel as lowbit

TYPES = tuple(t.upper() for t in KERNEL_TYPES)


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    """Gaussian rows at mixed scales, heavy tails, one-signed and zero rows: every scale/min branch."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((24, 512)) * rng.lognormal(0, 2, (24, 1))
    x[1] = 0.0
    x[2] = np.abs(x[2])
    x[3] = -np.abs(x[3])
    x[4] = rng.standard_t(3, 512) * 1e-3
    x[5] = np.where(rng.random(512) < 0.02, 40.0, rng.standard_normal(512) * 0.01)
    return x.astype(np.float32)


def _variants() -> list[str]:
    return [v for v in lowbit.VARIANTS if lowbit.variant_supported(v)]


def _blocks(data: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(data).reshape(-1))


@pytest.mark.parametrize("qtype", TYPES)
def test_kernel_equals_gguf_dequantize(qtype: str, rows: np.ndarray) -> None:
    data = quantize_array(rows, qtype)
    tid = lowbit.SUPPORTED_QTYPES[qtype]
    ref = gguf.quants.dequantize(data, gguf.GGMLQuantizationType(tid)).reshape(-1)
    ref_bf16 = torch.from_numpy(ref).to(torch.bfloat16)
    assert _variants()[0] == "generic"
    for variant in _variants():
        out = torch.full((ref.size,), float("nan"))
        lowbit.dequantize_into(_blocks(data), tid, out, lowbit.VARIANTS[variant])
        assert np.array_equal(out.numpy().view(np.uint32), ref.view(np.uint32)), (qtype, variant)
        out16 = torch.zeros(ref.size, dtype=torch.bfloat16)
        lowbit.dequantize_into(_blocks(data), tid, out16, lowbit.VARIANTS[variant])
        assert torch.equal(out16.view(torch.int16), ref_bf16.view(torch.int16)), (qtype, variant)


def test_a_changed_byte_changes_the_values(rows: np.ndarray) -> None:
    """Negative control: the comparison above sees a one-bit change in the packed data."""
    data = quantize_array(rows, "Q4_K").copy()
    ref = gguf.quants.dequantize(data, gguf.GGMLQuantizationType.Q4_K).reshape(-1)
    data.reshape(-1)[100] ^= 0x10  # a high nibble in the first super-block's quants
    out = torch.empty(ref.size)
    lowbit.dequantize_into(_blocks(data), lowbit.SUPPORTED_QTYPES["Q4_K"], out)
    assert int((out.numpy() != ref).sum()) == 1


def test_threads_do_not_change_the_result() -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (4096, 144), dtype=np.uint8)
    data[:, 0:4] = np.frombuffer(np.array([0.01, 0.002], np.float16).tobytes(), np.uint8)
    outs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = torch.empty(4096 * 256, dtype=torch.bfloat16)
            lowbit.dequantize_into(_blocks(data), lowbit.SUPPORTED_QTYPES["Q4_K"], out)
            outs.append(out)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0].view(torch.int16), outs[1].view(torch.int16))


def test_bad_inputs_are_refused() -> None:
    blocks = torch.zeros(144 * 2, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="unsupported ggml type"):
        lowbit.dequantize_into(blocks, 30, torch.empty(512))  # BF16: nothing to dequantize
    with pytest.raises(RuntimeError, match="need 512"):
        lowbit.dequantize_into(blocks, lowbit.SUPPORTED_QTYPES["Q4_K"], torch.empty(256))
    with pytest.raises(RuntimeError, match="whole number"):
        lowbit.dequantize_into(blocks[:-1], lowbit.SUPPORTED_QTYPES["Q4_K"], torch.empty(512))


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K", "Q6_K", "Q2_K", "Q5_1"])
def test_few_token_product_equals_the_dequantized_weight_product(qtype: str) -> None:
    """gemv_into multiplies the same (bf16-rounded or float32) weight values as the buffer path, in
    float32 with its own summation order: within float32 rounding of an exact (float64) product."""
    rng = np.random.default_rng(3)
    n_out, k_in = 48, 512
    data = quantize_array((rng.standard_normal((n_out, k_in)) * 0.05).astype(np.float32), qtype)
    tid = lowbit.SUPPORTED_QTYPES[qtype]
    w32 = torch.from_numpy(gguf.quants.dequantize(data, gguf.GGMLQuantizationType(tid)).reshape(n_out, k_in))
    for variant in _variants():
        for tokens in (1, 3, 8):
            x = torch.from_numpy(rng.standard_normal((tokens, k_in)).astype(np.float32))
            for bf16_weight, w in ((True, w32.to(torch.bfloat16).float()), (False, w32)):
                y = torch.empty(tokens, n_out)
                lowbit.gemv_into(_blocks(data), tid, x, y, bf16_weight, lowbit.VARIANTS[variant])
                exact = (x.double() @ w.double().T)
                bound = 1e-5 * (x.double().abs() @ w.double().abs().T) + 1e-30
                assert bool(((y.double() - exact).abs() <= bound).all()), (qtype, variant, tokens, bf16_weight)
    # Negative control: another type's weight is far outside that bound.
    other = torch.from_numpy(gguf.quants.dequantize(quantize_array(w32.numpy(), "Q2_K" if qtype != "Q2_K" else "Q8_0"),
                                                    gguf.GGMLQuantizationType.Q2_K if qtype != "Q2_K"
                                                    else gguf.GGMLQuantizationType.Q8_0).reshape(n_out, k_in))
    assert not torch.allclose(x @ other.T, y, rtol=1e-4, atol=1e-6)


def test_few_token_product_refuses_bad_shapes() -> None:
    blocks = torch.zeros(144 * 4, dtype=torch.uint8)  # 4 Q4_K super-blocks: 2 x 512
    tid = lowbit.SUPPORTED_QTYPES["Q4_K"]
    with pytest.raises(RuntimeError, match="rows"):
        lowbit.gemv_into(blocks, tid, torch.zeros(9, 512), torch.empty(9, 2), True)
    with pytest.raises(RuntimeError, match="need"):
        lowbit.gemv_into(blocks, tid, torch.zeros(1, 512), torch.empty(1, 3), True)
