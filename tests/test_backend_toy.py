"""Adding a backend touches its module, its catalogue entry and pyproject's extras — nothing else in
src/. The proof: a toy int8 backend defined wholly here (one module-like object, one catalogue
entry, registered with the public ``register_backend``) parses, validates, plans, loads
zoo:tiny-flux and generates, through the same functions as every real backend."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from diffquant.backends import register_backend, unregister_backend, why_not_here
from diffquant.backends.base import (
    ComponentContext,
    MemoryTraits,
    SaveTarget,
    count_stored_bytes,
    interface,
    load_plain,
    plain_as_native,
)
from diffquant.errors import DiffquantError
from diffquant.recipes import parse_recipe
from diffquant.recipes.catalog import BACKENDS, BackendDef, OptionDef, TypeDef
from diffquant.recipes.model import QuantSpec

MODEL = "zoo:tiny-flux"
NOTE = "toy: int8 rows, dequantized per call"


def _toy_linear_class() -> type:
    import torch

    class ToyLinear(torch.nn.Module):
        """int8 weights with one float32 scale per output row; dequantized for each call."""

        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__()
            weight = linear.weight.detach().float()
            scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127
            self.register_buffer("qweight", torch.round(weight / scale[:, None]).to(torch.int8))
            self.register_buffer("scale", scale)
            self.bias = linear.bias
            self.compute_dtype = linear.weight.dtype

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            weight = (self.qweight.float() * self.scale[:, None]).to(self.compute_dtype)
            return torch.nn.functional.linear(x, weight, self.bias)

    return ToyLinear


def _swap(module: Any, spec: QuantSpec) -> Any:
    import torch

    toy = _toy_linear_class()
    for parent_name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) is torch.nn.Linear and not _kept(spec, full):
                setattr(parent, child_name, toy(child))
    return module


def _kept(spec: QuantSpec, name: str) -> bool:
    return any(p in name.split(".") for p in spec.skip_modules)


def _stored_bytes(spec: QuantSpec, model: Any, ctx: ComponentContext) -> int:
    import torch

    def converted(name: str, module: Any) -> int | None:
        if not name or type(module) is not torch.nn.Linear or _kept(spec, name):
            return None
        bias = module.bias.numel() * module.bias.element_size() if module.bias is not None else 0
        return module.out_features * module.in_features + 4 * module.out_features + bias

    return count_stored_bytes(model, converted)


def _refuse_save(component: Any, spec: QuantSpec, target: SaveTarget) -> str:
    raise DiffquantError("the toy backend has no export format", hint="load it with the recipe instead")


def _no_saved(folder: Path, meta: dict[str, Any], spec: QuantSpec, dtype: Any, device: str) -> Any:
    raise DiffquantError("the toy backend has no export format")


TOY_MODULE = SimpleNamespace(
    name="toy", packages=("torch",), cache_quantized=False, memory=MemoryTraits(reads_source=True), formats={},
    why_not_here=lambda spec, device: None if device == "cpu" else "toy runs on CPU only. Nearest that runs: bnb-int8.",
    notes=lambda spec, device: [NOTE],
    disk_offload_breaks=lambda spec: "is not tried with the toy.",
    compile_breaks=lambda spec, device, mode: None,
    load_config=lambda spec, ctx: None,
    load_component=lambda spec, ctx, cache_dir: _swap(load_plain(ctx), spec),
    cached_file=lambda spec, ctx, cache_dir: None,
    before_load=lambda: None, after_load=lambda pipe, model_dir: None,
    save=_refuse_save, load_saved=_no_saved, plain_load=plain_as_native,
    stored_bytes=_stored_bytes,
    quantize_linear=lambda linear, spec, name, model: None if _kept(spec, name) else _toy_linear_class()(linear),
    keeps_precise=lambda spec, name, model: _kept(spec, name),
    keep_precise=lambda spec, keep, model: spec,
    upgrade_type=lambda spec: None,
    evaluation_copy=lambda layer: layer,
)
TOY_ENTRY = BackendDef("toy", "Toy int8 rows (a test backend)", "torch", "core",
                       {"int8": TypeDef("int8", "int8 weights, float32 scale per row", 8.0)},
                       {"skip": OptionDef("skip", str, "module-name patterns kept unquantized, separated by '|'")},
                       denoiser_only=True)


@pytest.fixture
def toy() -> Any:
    register_backend(TOY_ENTRY, TOY_MODULE)  # the public way; undone after each test
    try:
        yield TOY_MODULE
    finally:
        unregister_backend("toy")


def test_toy_module_is_complete() -> None:
    assert all(hasattr(TOY_MODULE, m) for m in interface())


def test_toy_backend_parses_validates_and_is_judged(toy: Any) -> None:
    recipe = parse_recipe("toy-int8(skip=proj_out)+offload-group-leaf")
    assert recipe.name == "toy-int8(skip=proj_out)+offload-group-leaf"
    assert recipe.quant[0] == QuantSpec("toy", "int8", skip_modules=("proj_out",))
    assert type(recipe).from_dict(recipe.to_dict()) == recipe  # the dict form validates it too
    with pytest.raises(DiffquantError, match=r"Unknown Toy int8 rows \(a test backend\) type 'int4'"):
        parse_recipe("toy-int4")
    with pytest.raises(DiffquantError, match="Did you mean: 'int8'"):
        parse_recipe("toy-int9")
    with pytest.raises(DiffquantError, match="Did you mean: 'toy-int8'"):
        parse_recipe("tyo-int8")
    assert why_not_here(parse_recipe("toy-int8"), "cpu") is None
    assert "Nearest that runs: bnb-int8" in (why_not_here(parse_recipe("toy-int8"), "cuda") or "")
    assert "is not tried with the toy" in (why_not_here(parse_recipe("toy-int8+offload-group-leaf(disk)"), "cpu") or "")


def test_toy_backend_is_unknown_once_unregistered() -> None:
    assert "toy" not in BACKENDS
    with pytest.raises(DiffquantError):
        parse_recipe("toy-int8")


def test_toy_backend_plans_loads_and_generates(toy: Any) -> None:
    import torch

    from diffquant.inspect import component_stats
    from diffquant.pipeline import generate, load_info, load_pipeline
    from diffquant.plan import plan_model

    plan = plan_model(MODEL, ["bf16", "toy-int8"], device="cpu")
    bf16, mine = plan.recipes
    assert mine.runs_here and mine.memory is not None, mine.why_not
    assert mine.components["transformer"].quant == "toy-int8"
    assert mine.components["transformer"].stored_bytes < 0.6 * bf16.components["transformer"].stored_bytes

    pipe = load_pipeline(MODEL, "toy-int8", device="cpu")
    assert NOTE in load_info(pipe).notes
    layers = [m for m in pipe.transformer.modules() if type(m).__name__ == "ToyLinear"]
    assert layers and all(m.qweight.dtype == torch.int8 for m in layers)
    loaded = component_stats(pipe)["transformer"].weight_bytes
    assert mine.components["transformer"].stored_bytes == loaded  # plan's bytes are the loaded bytes

    out = generate(pipe, "a red circle", seed=0, steps=2)
    reference = generate(load_pipeline(MODEL, "bf16", device="cpu"), "a red circle", seed=0, steps=2)
    assert out.image.size == reference.image.size
    diff = (out.latents - reference.latents).abs()
    assert torch.isfinite(out.latents).all()
    assert 0 < float(diff.mean()) < float(reference.latents.abs().mean())  # quantized: close, not equal


def test_a_backend_may_name_its_own_tokens() -> None:
    entry = BackendDef("toyname", "Toy with its own token names", "torch", "core",
                       {"int8": TypeDef("int8", "int8", 8.0), "int4": TypeDef("int4", "int4", 4.5)},
                       tokens={"int8-toy": "int8", "int8-toy-int8": "int8", "int4-toy": "int4"})
    register_backend(entry, SimpleNamespace(name="toyname"))
    try:
        recipe = parse_recipe("int4-toy+int8-toy-int8@text_encoder")
        assert [(q.backend, q.qtype) for q in recipe.quant] == [("toyname", "int4"), ("toyname", "int8")]
        assert recipe.name == "int4-toy+int8-toy@text_encoder"  # the first name of a type is its name
        with pytest.raises(DiffquantError, match=r"Unknown recipe token 'toyname-int8'[\s\S]*Did you mean: 'int8-toy"):
            parse_recipe("toyname-int8")  # its own names replace <name>-<type>
    finally:
        unregister_backend("toyname")
