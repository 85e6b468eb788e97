"""The chunked CPU dequantization of GGUF layers gives the very weight and output diffusers' own
path gives, in chunks (the memory saving is measured by the benchmark, docs/bench.md)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")
pytest.importorskip("diffusers")


def _layer(qtype: str, out_features: int = 96, in_features: int = 256, seed: int = 0) -> object:
    import numpy as np
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter

    kind = getattr(gguf.GGMLQuantizationType, qtype)
    rng = np.random.default_rng(seed)
    data = gguf.quantize(rng.standard_normal((out_features, in_features)).astype(np.float32), kind)
    layer = GGUFLinear(in_features, out_features, bias=True, compute_dtype=torch.bfloat16)
    layer.weight = GGUFParameter(torch.from_numpy(data), quant_type=kind)
    layer.bias = torch.nn.Parameter(torch.zeros(out_features, dtype=torch.bfloat16))
    return layer


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0", "Q4_0"])
def test_chunked_layer_is_bit_identical(qtype: str) -> None:
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    from diffquant.backends.gguf_chunked import dequantize_rows, use_chunked_dequant

    layer = _layer(qtype)
    whole = dequantize_gguf_tensor(layer.weight).to(torch.bfloat16)
    rows = dequantize_rows(layer.weight, torch.bfloat16, chunk_values=5 * 256)  # 5 rows a step: 20 steps
    assert rows is not None and torch.equal(rows, whole)
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = layer(x)
        assert use_chunked_dequant(torch.nn.Sequential(layer)) == 1
        assert type(layer).__name__ == "ChunkedGGUFLinear"
        assert torch.equal(layer(x), expected)


def test_a_changed_weight_changes_the_output() -> None:
    """Negative control: the equality above can fail (a different weight gives another output)."""
    from diffquant.backends.gguf_chunked import use_chunked_dequant

    a, b = _layer("Q4_1"), _layer("Q4_1", seed=1)  # another weight, same type and shape
    x = torch.randn(2, 256, dtype=torch.bfloat16)
    use_chunked_dequant(torch.nn.Sequential(a, b))
    with torch.no_grad():
        assert not torch.equal(a(x), b(x))
