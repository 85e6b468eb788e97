"""Measure each module group's sensitivity to a recipe on captured denoiser inputs."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from diffquant.errors import DiffquantError
from diffquant.recipes.model import QuantSpec, Recipe
from diffquant.sensitivity.capture import Captured, capture_inputs, run_denoiser
from diffquant.sensitivity.groups import Group, make_groups, quantized_linears


@dataclass
class GroupResult:
    name: str
    modules: tuple[str, ...]
    rel_error: float  # ||y_q - y_ref||^2 / ||y_ref||^2 over all captured calls, this group quantized
    bytes_ref: int  # the group's weights at the reference precision
    bytes_quant: int  # ... under the recipe
    rel_error_upgrade: float = 0.0  # the same with the group one type up (0: kept at reference)
    bytes_upgrade: int = 0
    psnr_db: float | None = None  # end image vs reference, this group alone quantized (top groups)


@dataclass
class SensitivityResult:
    model: str
    recipe: str
    spec: dict[str, Any]  # the denoiser's QuantSpec as a dict
    denoiser: str
    granularity: str
    upgrade: str | None  # the type a kept group moves to (None: the reference precision)
    groups: list[GroupResult]  # ranked, most sensitive first
    module_bytes: dict[str, tuple[int, int, int]]  # module -> (reference, recipe, upgrade) bytes
    uniform_rel_error: float  # every group quantized at once: the uniform recipe
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def total_quant_bytes(self) -> int:
        return sum(g.bytes_quant for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        total = self.total_quant_bytes() or 1
        for row, group in zip(data["groups"], self.groups, strict=True):
            row["share_of_quant_bytes"] = group.bytes_quant / total
        return data


def denoiser_spec(recipe: Recipe, components: dict[str, Any]) -> tuple[str, QuantSpec]:
    from diffquant.components import denoiser_name, resolve_targets

    name = denoiser_name(components)
    spec = resolve_targets(recipe, components).get(name)
    if spec is None:
        raise DiffquantError(f"Recipe {recipe.name!r} does not quantize the denoiser ({name!r}): there is "
                             "nothing to measure.", hint="give a quantizing recipe, e.g. bnb-nf4 or gguf-q4_k")
    return name, spec


def backend_for(spec: QuantSpec) -> Any:
    from diffquant.backends import get_backend

    backend = get_backend(spec.backend)
    backend.upgrade_type(spec)  # a backend that cannot quantize one module at a time refuses here, cheaply
    return backend


class _Swapper:
    """Puts replacement modules into the denoiser and takes them out again."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def swap(self, replacements: dict[str, Any]) -> dict[str, Any]:
        old = {}
        for name, new in replacements.items():
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            old[name] = getattr(parent, child)
            setattr(parent, child, new)
        return old


def _quantized(backend: Any, spec: QuantSpec, model: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """Quantized copies of ``names`` under ``spec``; a module the spec keeps stays itself."""
    out = {}
    for name in names:
        layer = backend.quantize_linear(model.get_submodule(name), spec, name, model)
        out[name] = layer if layer is not None else model.get_submodule(name)
    return out


def _rel_error(model: Any, captured: Captured) -> float:
    num = den = 0.0
    for call, ref in zip(captured.calls, captured.outputs, strict=True):
        out = run_denoiser(model, call)
        num += float((out - ref).pow(2).sum())
        den += float(ref.pow(2).sum())
    return num / den if den else 0.0


def _bytes(layer: Any) -> int:
    from diffquant.inspect import module_stats

    return module_stats(layer).weight_bytes


def _error_with(swapper: _Swapper, layers: dict[str, Any], captured: Captured) -> float:
    old = swapper.swap(layers)
    try:
        return _rel_error(swapper.model, captured)
    finally:
        swapper.swap(old)


def measure_sensitivity(model: str, recipe: str | Recipe, *, granularity: str = "layer",
                        prompts: list[str] | None = None, seed: int = 0, steps: int | None = None,
                        calls_per_prompt: int = 4, psnr_top: int = 3, device: str | None = None,
                        progress: Any = None) -> tuple[SensitivityResult, Any]:
    """Rank the denoiser's module groups by the error the recipe causes in each alone.

    Returns the result and the loaded reference denoiser (mixing asks its backend about it).
    """
    from diffquant.components import read_components, resolve_model
    from diffquant.pipeline import load_pipeline
    from diffquant.recipes import load_recipe

    started = time.perf_counter()
    recipe = load_recipe(recipe)
    components = read_components(resolve_model(model))
    denoiser_name, spec = denoiser_spec(recipe, components)
    backend = backend_for(spec)
    reason = backend.why_not_here(spec, device or "cpu")
    if reason:
        raise DiffquantError(f"Recipe {recipe.name!r} cannot run here: {reason}")
    pipe = load_pipeline(model, Recipe(dtype=recipe.dtype), device=device)
    denoiser = getattr(pipe, denoiser_name)
    names = quantized_linears(denoiser, spec, backend)
    if not names:
        raise DiffquantError(f"{spec.backend}-{spec.qtype} quantizes no linear layer of {denoiser_name}.")
    groups = make_groups(names, granularity)
    prompts = prompts or _model_prompts(model)
    captured = capture_inputs(pipe, denoiser, prompts, seed=seed, steps=steps, calls_per_prompt=calls_per_prompt)
    upgrade = backend.upgrade_type(spec)
    up_spec = replace(spec, qtype=upgrade) if upgrade else None
    swapper = _Swapper(denoiser)

    module_bytes: dict[str, tuple[int, int, int]] = {}
    results = []
    for index, group in enumerate(groups):
        if progress:
            progress(index, len(groups), group.name)
        results.append(_measure_group(group, backend, spec, up_spec, swapper, captured, module_bytes))
    every = _quantized(backend, spec, denoiser, tuple(names))
    uniform = _error_with(swapper, every, captured)
    del every
    results.sort(key=lambda r: (-r.rel_error, r.name))
    if psnr_top:
        _end_image_psnr(pipe, denoiser, results[:psnr_top], backend, spec, swapper, captured, steps)
    settings = {"prompts": captured.prompts, "seed": seed, "steps": steps, "calls_per_prompt": calls_per_prompt,
                "calls": len(captured.calls), "device": device or "auto", "metric": "relative MSE of the "
                "denoiser output over the captured calls"}
    result = SensitivityResult(model=model, recipe=recipe.name, spec=spec.to_dict(), denoiser=denoiser_name,
                               granularity=granularity, upgrade=upgrade, groups=results,
                               module_bytes=module_bytes, uniform_rel_error=uniform, settings=settings,
                               seconds=time.perf_counter() - started)
    return result, denoiser


def _measure_group(group: Group, backend: Any, spec: QuantSpec, up_spec: QuantSpec | None, swapper: _Swapper,
                   captured: Captured, module_bytes: dict[str, tuple[int, int, int]]) -> GroupResult:
    model = swapper.model
    layers = _quantized(backend, spec, model, group.modules)
    error = _error_with(swapper, layers, captured)
    ups = _quantized(backend, up_spec, model, group.modules) if up_spec else {n: model.get_submodule(n)
                                                                             for n in group.modules}
    error_up = _error_with(swapper, ups, captured) if up_spec else 0.0
    for name in group.modules:
        module_bytes[name] = (_bytes(model.get_submodule(name)), _bytes(layers[name]), _bytes(ups[name]))
    return GroupResult(name=group.name, modules=group.modules, rel_error=error,
                       bytes_ref=sum(module_bytes[n][0] for n in group.modules),
                       bytes_quant=sum(module_bytes[n][1] for n in group.modules),
                       rel_error_upgrade=error_up,
                       bytes_upgrade=sum(module_bytes[n][2] for n in group.modules))


def _end_image_psnr(pipe: Any, denoiser: Any, top: list[GroupResult], backend: Any, spec: QuantSpec,
                    swapper: _Swapper, captured: Captured, steps: int | None) -> None:
    """PSNR of the final image with only this group quantized, against the reference image."""
    from diffquant.pipeline import generate
    from diffquant.quality.metrics import to_tensor

    def images() -> list[Any]:
        return [to_tensor(generate(pipe, p, seed=captured.seed, steps=steps).image) for p in captured.prompts]

    reference = images()
    for group in top:
        old = swapper.swap(_quantized(backend, spec, denoiser, group.modules))
        try:
            values = [_psnr(a, b) for a, b in zip(images(), reference, strict=True)]
        finally:
            swapper.swap(old)
        group.psnr_db = sum(values) / len(values)


def _psnr(a: Any, b: Any) -> float:
    import math

    mse = float((a.float() - b.float()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _model_prompts(model: str) -> list[str]:
    import json

    from diffquant.components import resolve_model

    meta = resolve_model(model) / "diffquant.json"
    if meta.is_file():
        prompts = json.loads(meta.read_text()).get("prompts")
        if prompts:
            return list(prompts)[:3]
    return ["a photo of a cat", "a red square on a white background"]
