"""torch.compile of weight-only-quantized modules on CPU (diffquant.memory.compile_kwargs): the mode's
CUDA-graph request is dropped there, because its graph-partition reordering hoists every layer's
dequantization to the start of the graph (benchmarks/inductor_fp8_dequant.py); other modules and
devices keep torch.compile's mode as given."""

from __future__ import annotations

import re

import pytest

from diffquant.memory import CPU_QUANTIZED_WEIGHT_OPTIONS, apply_compile, compile_kwargs
from diffquant.recipes import parse_recipe


def _stack(layers: int = 2, width: int = 64, quantized: bool = True):
    import torch

    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)]).to(torch.bfloat16)
    if quantized:
        from torchao.quantization import Float8WeightOnlyConfig, quantize_

        quantize_(model, Float8WeightOnlyConfig())
    return model


class _Pipe:
    def __init__(self, transformer) -> None:
        self.transformer = transformer


def test_quantized_cpu_module_gets_the_modes_options_without_cuda_graphs() -> None:
    from torch._inductor import list_mode_options

    kwargs = compile_kwargs(_stack(), "max-autotune", True)
    assert "mode" not in kwargs and kwargs["fullgraph"] is True
    assert kwargs["options"] == {**list_mode_options("max-autotune"), "triton.cudagraphs": False}
    assert compile_kwargs(_stack(), "reduce-overhead", False) == {"fullgraph": False,
                                                                   "options": {"triton.cudagraphs": False}}


@pytest.mark.parametrize(("quantized", "mode", "expected_mode"), [
    (False, "max-autotune", "max-autotune"),  # bf16 weights: nothing is dequantized in the graph
    (True, "default", None),  # no CUDA graphs asked for
    (True, "max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs"),  # the options would change nothing
])
def test_other_cases_keep_the_mode_as_given(quantized: bool, mode: str, expected_mode: str | None) -> None:
    assert compile_kwargs(_stack(quantized=quantized), mode, True) == {"mode": expected_mode, "fullgraph": True}


def test_apply_compile_says_when_it_adds_the_options() -> None:
    recipe = parse_recipe("bf16+compile(fullgraph,mode=max-autotune)")
    quantized, plain = _stack(), _stack(quantized=False)
    notes = apply_compile(_Pipe(quantized), recipe, "transformer")
    assert quantized._compiled_call_impl is not None
    assert len(notes) == 2 and "triton.cudagraphs=False" in notes[1]
    assert len(apply_compile(_Pipe(plain), recipe, "transformer")) == 1


def _dequantized_before_each_mm(kwargs: dict) -> list[int]:
    """Compile a 2-layer fp8 stack with ``kwargs`` and count, for each ``mm`` of inductor's wrapper,
    the dequantized weights written since the previous one and not yet freed."""
    import torch
    from torch._inductor.utils import run_and_get_code

    model = _stack(layers=2, width=256)
    torch._dynamo.reset()
    # a cache hit would skip code generation: compile afresh
    with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        _, code = run_and_get_code(torch.compile(model, **kwargs), torch.randn(4, 256, dtype=torch.bfloat16))
    wrapper = code[0][code[0].index("def call("):].splitlines()
    alive: set[str] = set()
    counts = []
    for line in wrapper:
        if "cpp_fused" in line and "(" in line:
            alive.update(re.findall(r"\bbuf\d+\b", line))
        elif "mm(" in line:
            counts.append(len(alive))
        for freed in re.findall(r"del (buf\d+)", line):
            alive.discard(freed)
    return counts


def test_each_dequantized_weight_is_freed_before_the_next_layers() -> None:
    fixed = _dequantized_before_each_mm(compile_kwargs(_stack(), "max-autotune", True))
    plain = _dequantized_before_each_mm({"mode": "max-autotune", "fullgraph": True})
    assert fixed == [1, 1], fixed
    assert plain[0] == 2, plain  # the control: torch.compile as the mode sets it writes both first
    assert CPU_QUANTIZED_WEIGHT_OPTIONS  # the benchmark's "unfixed" variant clears it; tests must not
