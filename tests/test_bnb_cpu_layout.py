"""bitsandbytes' CPU layout: on an AVX512-BF16 CPU a ``Linear4bit`` converts its weight on its first
forward (a 32-bit copy of every weight plus byte copies, in the first call's peak); diffquant's CPU
load path does that conversion while loading instead. The layer must be the one bitsandbytes would
have made itself, a first call must convert nothing, and a state dict taken from a converted layer
must reload to the same outputs (bitsandbytes' own inverse leaves the block scales transposed)."""

from __future__ import annotations

import pytest

bnb = pytest.importorskip("bitsandbytes")
torch = pytest.importorskip("torch")

from bitsandbytes.functional import has_avx512bf16

from diffquant.backends import bnb as dq_bnb
from diffquant.recipes import parse_recipe

pytestmark = pytest.mark.skipif(not has_avx512bf16(), reason="bitsandbytes converts layers only on AVX512-BF16 CPUs")

SPEC = parse_recipe("bnb-nf4").quant[0]


def _model(seed: int = 0) -> torch.nn.Module:
    """Two layers whose inputs span several 64-weight blocks (the scales' transposition matters) and
    one whose 40 output rows are not whole blocks of 32 (bitsandbytes' conversion would fail an
    assert on it: it keeps the generic path)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(256, 64), torch.nn.GELU(), torch.nn.Linear(64, 128),
                                torch.nn.Linear(128, 40))
    model = model.to(torch.bfloat16).eval()
    assert dq_bnb.swap_linear_layers(model, SPEC, torch.bfloat16, "cpu") == 3
    return model


def _packed(model: torch.nn.Module) -> list[bool]:
    return [bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False))
            for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def _run(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.no_grad():
        return model(torch.randn(3, 256, dtype=torch.bfloat16))


def test_packing_on_load_gives_the_layer_bitsandbytes_makes_on_its_first_call() -> None:
    lazy, eager = _model(), _model()
    assert dq_bnb.pack_for_cpu(eager) == 2
    assert _packed(eager) == [True, True, False] and _packed(lazy) == [False, False, False]
    assert dq_bnb.pack_for_cpu(eager) == 0  # nothing left to convert
    pointers = [m.weight.data_ptr() for m in eager.modules() if isinstance(m, bnb.nn.Linear4bit)]
    out_eager, out_lazy = _run(eager), _run(lazy)
    assert _packed(lazy) == [True, True, False]  # bitsandbytes converted on the call (the negative control)
    assert [m.weight.data_ptr() for m in eager.modules() if isinstance(m, bnb.nn.Linear4bit)] == pointers
    assert torch.equal(out_eager, out_lazy)
    for a, b in zip(eager.modules(), lazy.modules()):
        if isinstance(a, bnb.nn.Linear4bit):
            assert torch.equal(a.weight.data, b.weight.data)
            assert torch.equal(a.weight.quant_state.absmax, b.weight.quant_state.absmax)


def _reload(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    fresh = torch.nn.Sequential(torch.nn.Linear(256, 64), torch.nn.GELU(), torch.nn.Linear(64, 128),
                                torch.nn.Linear(128, 40)).to(torch.bfloat16).eval()
    dq_bnb.load_prequantized(fresh, state, SPEC, torch.bfloat16, "cpu")
    return fresh


def test_a_state_dict_of_packed_layers_reloads_to_the_same_outputs() -> None:
    model = _model()
    dq_bnb.pack_for_cpu(model)
    expected = _run(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert _packed(model) == [True, True, False]  # saving leaves the live layers converted
    assert state["0.weight.absmax"].dtype == torch.float32 and state["0.weight.absmax"].dim() == 1
    reloaded = _reload(state)
    assert _packed(reloaded) == [True, True, False]  # the CPU load path converts a reloaded model too
    assert torch.equal(_run(reloaded), expected)
    assert torch.equal(_run(model), expected)


def test_bitsandbytes_own_inverse_scrambles_the_scales() -> None:
    """Negative control for the hooks: the same state dict taken through bitsandbytes alone (a
    layer converted by its first call, no diffquant hooks) reloads to different outputs."""
    model = _model()
    expected = _run(model)  # bitsandbytes converts here
    for layer in model.modules():
        if isinstance(layer, bnb.nn.Linear4bit):
            layer._state_dict_pre_hooks.clear()
            layer._state_dict_hooks.clear()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert not torch.equal(_run(_reload(state)), expected)


def test_the_cpu_load_path_leaves_no_conversion_for_the_first_call() -> None:
    """zoo:tiny-flux through diffquant.load_pipeline: every layer bitsandbytes would convert is
    converted already, and generating changes none of the layers' tensors."""
    import diffquant
    from diffquant.pipeline import generate

    pipe = diffquant.load_pipeline("zoo:tiny-flux", "bnb-nf4", device="cpu")
    layers = [m for name in ("transformer", "text_encoder_2") for m in getattr(pipe, name).modules()
              if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and any(_packed_layer(m) for m in layers)
    assert not any(dq_bnb._packable(m) for m in layers)
    pointers = [m.weight.data_ptr() for m in layers]
    generate(pipe, "a blue square", seed=0, steps=1, height=64, width=64)
    assert [m.weight.data_ptr() for m in layers] == pointers


def _packed_layer(layer: torch.nn.Module) -> bool:
    return bool(getattr(layer.weight.quant_state, "packing_format_for_cpu", False))


def test_double_quantized_layers_keep_the_generic_path() -> None:
    """Their uint8 scales would be expanded to bf16 and could not be saved back exactly."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 64)).to(torch.bfloat16).eval()
    dq_bnb.swap_linear_layers(model, parse_recipe("bnb-nf4(double_quant)").quant[0], torch.bfloat16, "cpu")
    assert dq_bnb.pack_for_cpu(model) == 0 and not model[0].support_avx512bf16_for_cpu
    with torch.no_grad():
        model(torch.randn(2, 256, dtype=torch.bfloat16))
    assert _packed(model) == [False] and model[0].weight.quant_state.nested
