"""Measure each module group's sensitivity to a recipe on captured denoiser inputs."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from diffquant.errors import DiffquantError
from diffquant.recipes.model import QuantSpec, Recipe
from diffquant.sensitivity.capture import Captured, capture_inputs, first_step_calls, recondition
from diffquant.sensitivity.groups import Group, make_groups, quantized_linears
from diffquant.sensitivity.measure import (
    GroupResult,
    _bytes,
    _error_of,
    _Images,
    _label,
    _Part,
    _psnr_of,
    _quantized,
    _rel_error,
)

# Where a group's error is measured: "alone" (that group quantized, the rest at reference) or
# "uniform" (every group quantized; the error the group's promotion removes: leave-one-out).
CONTEXTS = ("alone", "uniform")


@dataclass
class EncoderPart:
    """A text encoder the recipe quantizes: measured through the denoiser's output (its groups
    change the text conditioning of the captured calls)."""
    spec: dict[str, Any]
    upgrade: str | None
    module_bytes: dict[str, tuple[int, int, int]]
    uniform_rel_error: float  # every group of this encoder quantized, the denoiser at reference
    uniform_image_mse: float | None = None  # ... its end-image error (the calibration)


@dataclass
class SensitivityResult:
    model: str
    recipe: str
    spec: dict[str, Any]  # the denoiser's QuantSpec as a dict
    denoiser: str
    granularity: str
    upgrade: str | None  # the type a kept denoiser group moves to (None: the reference precision)
    groups: list[GroupResult]  # ranked across components, most sensitive first
    module_bytes: dict[str, tuple[int, int, int]]  # denoiser module -> (reference, recipe, upgrade) bytes
    uniform_rel_error: float  # every group of every measured component quantized: the uniform recipe
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    encoders: dict[str, EncoderPart] = field(default_factory=dict)  # text encoders measured too
    denoiser_uniform_rel_error: float = 0.0  # the denoiser's groups alone
    denoiser_uniform_image_mse: float | None = None  # ... its end-image error (the calibration)
    context: str = "alone"  # see CONTEXTS (a result read back without the field was "alone")
    uniform_image_mse: float | None = None  # context "uniform" with top groups measured: the recipe's image MSE

    def total_quant_bytes(self) -> int:
        return sum(g.bytes_quant for g in self.groups)

    def component_of(self, group: GroupResult) -> str:
        return group.component or self.denoiser

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


def _encoder_parts(recipe: Recipe, components: dict[str, Any], pipe: Any, denoiser_name: str,
                   granularity: str) -> list[_Part]:
    """The text encoders the recipe quantizes with a backend that can quantize one module."""
    from diffquant.components import resolve_targets

    parts = []
    for component, spec in resolve_targets(recipe, components).items():
        if component == denoiser_name or not component.startswith("text_encoder"):
            continue
        backend = backend_for(spec)
        model = getattr(pipe, component, None)
        if model is None:
            continue
        names = quantized_linears(model, spec, backend)
        if names:
            upgrade = backend.upgrade_type(spec)
            parts.append(_Part(component, model, spec, backend, replace(spec, qtype=upgrade) if upgrade else None,
                               make_groups(names, granularity), names))
    return parts


def measure_sensitivity(model: str, recipe: str | Recipe, *, granularity: str = "layer",
                        prompts: list[str] | None = None, seed: int = 0, steps: int | None = None,
                        calls_per_prompt: int = 4, psnr_top: int = 3, device: str | None = None,
                        progress: Any = None, text_encoders: bool = True,
                        calibrate: bool = True, context: str = "alone") -> tuple[SensitivityResult, Any]:
    """Rank the module groups of the denoiser and of the text encoders the recipe quantizes by the
    error each causes in the denoiser's output, put on the end image's scale.

    The denoiser-output error is one scale for every component, but not one exchange rate into
    the end image: on zoo:shapes a T5 group moves the image far more per unit of it than a
    transformer group (a conditioning change steers every step the same way). With ``calibrate``
    each component's uniform quantization is also run end to end once; its image MSE over its
    proxy error converts that component's groups (``image_mse_est``), and the ranking is by that.
    The ``psnr_top`` top groups get their end-image error measured (``image_mse``).

    ``context="alone"`` (the default) quantizes one group at a time, the rest at the reference
    precision. ``context="uniform"`` measures each group inside the uniform recipe: every group
    quantized, then this one promoted (one type up where the backend has one, and to the
    reference precision); its error is what the promotion removes (see ``incontext.py``). Its
    mixes are better when enough top groups get their end-image gain measured (``psnr_top``).

    Returns the result and the loaded reference models by component name (mixing asks their
    backends about them).
    """
    from diffquant.components import read_components, resolve_model
    from diffquant.pipeline import load_pipeline
    from diffquant.recipes import load_recipe

    started = time.perf_counter()
    if context not in CONTEXTS:
        from diffquant.errors import unknown_choice

        raise unknown_choice("sensitivity context", context, CONTEXTS,
                             hint="--context alone (each group quantized by itself) or uniform (each group "
                                  "promoted inside the uniformly quantized model)")
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
    upgrade = backend.upgrade_type(spec)
    main = _Part(denoiser_name, denoiser, spec, backend, replace(spec, qtype=upgrade) if upgrade else None,
                 make_groups(names, granularity), names)
    encoders = _encoder_parts(recipe, components, pipe, denoiser_name, granularity) if text_encoders else []
    prompts = prompts or _model_prompts(model)
    captured = capture_inputs(pipe, denoiser, prompts, seed=seed, steps=steps, calls_per_prompt=calls_per_prompt)

    byte_tables: dict[str, dict[str, tuple[int, int, int]]] = {}
    quantized: dict[str, dict[str, Any]] = {}  # context "uniform": every part's quantized copies
    if context == "alone":
        results = _sweep_alone((main, *encoders), main, pipe, captured, byte_tables, progress)
        errors = {part.component: _error_of(part, main, pipe, captured,
                                            _quantized(part.backend, part.spec, part.model, tuple(part.names)))
                  for part in (main, *encoders)}
        uniform = _uniform_error((main, *encoders), main, pipe, captured)
    else:
        from diffquant.sensitivity.incontext import sweep_in_context

        results, errors, uniform, quantized = sweep_in_context((main, *encoders), main, pipe, captured,
                                                               byte_tables, progress)
    parts = {p.component: p for p in (main, *encoders)}
    calibration: dict[str, float | None] = {c: None for c in parts}
    uniform_image: float | None = None
    if calibrate or psnr_top:
        images = _Images(pipe, captured, steps)
        if calibrate:  # without it there is no end-image scale: the ranking stays on the proxy
            calibration = {c: images.mse(part, tuple(part.names), quantized.get(c)) for c, part in parts.items()}
            for group in results:
                mse, proxy = calibration[group.component or denoiser_name], errors[group.component or denoiser_name]
                group.image_mse_est = group.rel_error * (mse / proxy if mse is not None and proxy else 0.0)
            results.sort(key=lambda r: (-r.image_mse_est, r.name))
        else:
            results.sort(key=lambda r: (-r.rel_error, r.name))
        if context == "alone":
            for group in results[:psnr_top]:
                group.image_mse = images.mse(parts[group.component or denoiser_name], group.modules)
                group.psnr_db = _psnr_of(group.image_mse)
        elif psnr_top:  # the measured gain: the uniform recipe's end image vs it with the group promoted
            from diffquant.sensitivity.incontext import measure_promoted

            uniform_image = measure_promoted(images, parts, quantized, results[:psnr_top], denoiser_name)
        if calibrate:
            _match_measured(results)
    else:
        results.sort(key=lambda r: (-r.rel_error, r.name))
    settings = {"prompts": captured.prompts, "seed": seed, "steps": steps, "calls_per_prompt": calls_per_prompt,
                "calls": len(captured.calls), "device": device or "auto", "context": context,
                "metric": "relative MSE of the denoiser output over the captured calls (text-encoder groups: "
                "the calls re-conditioned on the prompts encoded with that group quantized, the denoiser at "
                "reference)" if context == "alone" else "relative MSE of the denoiser output over the captured "
                "calls with every group quantized, minus the same with this group promoted (text encoders: "
                "the calls re-conditioned on the prompts encoded by the quantized encoders)"}
    result = SensitivityResult(
        model=model, recipe=recipe.name, spec=spec.to_dict(), denoiser=denoiser_name, granularity=granularity,
        upgrade=upgrade, groups=results, module_bytes=byte_tables[denoiser_name], uniform_rel_error=uniform,
        settings=settings, seconds=time.perf_counter() - started,
        encoders={p.component: EncoderPart(p.spec.to_dict(), p.up_spec.qtype if p.up_spec else None,
                                           byte_tables[p.component], errors[p.component], calibration[p.component])
                  for p in encoders},
        denoiser_uniform_rel_error=errors[denoiser_name], denoiser_uniform_image_mse=calibration[denoiser_name],
        context=context, uniform_image_mse=uniform_image)
    models = {denoiser_name: denoiser, **{p.component: p.model for p in encoders}}
    return result, models


def _sweep_alone(parts: tuple[_Part, ...], main: _Part, pipe: Any, captured: Captured,
                 byte_tables: dict[str, dict[str, tuple[int, int, int]]], progress: Any) -> list[GroupResult]:
    """Each group quantized by itself, the rest at the reference precision."""
    total = sum(len(p.groups) for p in parts)
    done = 0
    results: list[GroupResult] = []
    for part in parts:
        table = byte_tables.setdefault(part.component, {})
        for group in part.groups:
            if progress:
                progress(done, total, _label(part, main, group.name))
            done += 1
            results.append(_measure_group(part, main, group, pipe, captured, table))
    return results


def _uniform_error(parts: tuple[_Part, ...], main: _Part, pipe: Any, captured: Captured) -> float:
    """Every measured component quantized at once: the uniform recipe."""
    olds = []
    try:
        for part in parts:
            olds.append((part, part.swapper.swap(_quantized(part.backend, part.spec, part.model,
                                                            tuple(part.names)))))
        calls = recondition(captured, first_step_calls(pipe, main.model, captured)) if len(parts) > 1 \
            else captured.calls
        return _rel_error(main.model, calls, captured.outputs)
    finally:
        for part, old in reversed(olds):
            part.swapper.swap(old)


def _measure_group(part: _Part, main: _Part, group: Group, pipe: Any, captured: Captured,
                   module_bytes: dict[str, tuple[int, int, int]]) -> GroupResult:
    model = part.model
    layers = _quantized(part.backend, part.spec, model, group.modules)
    error = _error_of(part, main, pipe, captured, layers)
    ups = _quantized(part.backend, part.up_spec, model, group.modules) if part.up_spec \
        else {n: model.get_submodule(n) for n in group.modules}
    error_up = _error_of(part, main, pipe, captured, ups) if part.up_spec else 0.0
    for name in group.modules:
        module_bytes[name] = (_bytes(model.get_submodule(name)), _bytes(layers[name]), _bytes(ups[name]))
    return GroupResult(name=_label(part, main, group.name), modules=group.modules, rel_error=error,
                       bytes_ref=sum(module_bytes[n][0] for n in group.modules),
                       bytes_quant=sum(module_bytes[n][1] for n in group.modules),
                       rel_error_upgrade=error_up,
                       bytes_upgrade=sum(module_bytes[n][2] for n in group.modules),
                       component="" if part is main else part.component)


def _match_measured(results: list[GroupResult]) -> None:
    """Scale every estimate by how the measured groups compare with theirs, and re-rank.

    The calibration converts at the rate of a whole component quantized; a group alone moves the
    end image less than its share of that (errors compound along the trajectory). Without this,
    a measured group would compete against inflated estimates and lose. One factor for all
    components keeps the calibration's exchange rates between them."""
    measured = [g for g in results if g.image_mse is not None and g.image_mse_est > 0]
    estimated = sum(g.image_mse_est for g in measured)
    if not measured or estimated <= 0:
        return
    rate = sum(g.image_mse or 0.0 for g in measured) / estimated
    if rate < 0:  # in context, promotions that made the image worse on balance: no rate to learn
        return
    for group in results:
        group.image_mse_est *= rate
    results.sort(key=lambda r: (-r.image_error(), r.name))


def _model_prompts(model: str) -> list[str]:
    import json

    from diffquant.components import resolve_model

    meta = resolve_model(model) / "diffquant.json"
    if meta.is_file():
        prompts = json.loads(meta.read_text()).get("prompts")
        if prompts:
            return list(prompts)[:3]
    return ["a photo of a cat", "a red square on a white background"]
