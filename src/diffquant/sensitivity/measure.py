"""The pieces every sensitivity sweep measures with, whatever the context (``run.py``: each group
alone; ``incontext.py``: each group promoted inside the uniform recipe): the per-group result,
the swapping of quantized copies into a component, the denoiser-output error and the end images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffquant.recipes.model import QuantSpec
from diffquant.sensitivity.capture import Captured, first_step_calls, recondition, run_denoiser
from diffquant.sensitivity.groups import Group


@dataclass
class GroupResult:
    name: str  # text-encoder groups carry their component: "text_encoder_2:encoder.block.0..."
    modules: tuple[str, ...]  # module names inside ``component``
    # The group's error on the denoiser output's scale, ||y_q - y_ref||^2 / ||y_ref||^2 over all
    # captured calls. Context "alone": with this group alone quantized. Context "uniform": what
    # promoting it to the reference precision removes from the uniform recipe's error.
    rel_error: float
    bytes_ref: int  # the group's weights at the reference precision
    bytes_quant: int  # ... under the recipe
    # The same with the group one type up (0: kept at reference). Context "uniform": the error
    # left at that type over the reference precision, inside the uniform recipe.
    rel_error_upgrade: float = 0.0
    bytes_upgrade: int = 0
    # End image vs reference for the top groups: "alone": this group alone quantized;
    # "uniform": the uniform recipe with this group promoted to the reference precision.
    psnr_db: float | None = None
    component: str = ""  # the pipeline component the modules belong to ("": the denoiser)
    # End-image error (MSE of the image against the reference image, [0, 1] pixels): estimated
    # for every group as rel_error x its component's calibration; measured for the top groups
    # ("uniform": the uniform recipe's image MSE minus that with the group promoted).
    image_mse_est: float = 0.0
    image_mse: float | None = None

    def image_error(self) -> float:
        """The group's end-image error: measured where it was, else estimated."""
        return self.image_mse if self.image_mse is not None else self.image_mse_est


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


def _rel_error(model: Any, calls: list[Any], outputs: list[Any]) -> float:
    num = den = 0.0
    for call, ref in zip(calls, outputs, strict=True):
        out = run_denoiser(model, call)
        num += float((out - ref).pow(2).sum())
        den += float(ref.pow(2).sum())
    return num / den if den else 0.0


def _bytes(layer: Any) -> int:
    from diffquant.inspect import module_stats

    return module_stats(layer).weight_bytes


@dataclass
class _Part:
    """One measured component: its module, spec, backend and how its groups are evaluated."""
    component: str
    model: Any
    spec: QuantSpec
    backend: Any
    up_spec: QuantSpec | None
    groups: list[Group]
    names: list[str]

    @property
    def swapper(self) -> _Swapper:
        return _Swapper(self.model)


def _label(part: _Part, main: _Part, name: str) -> str:
    return name if part is main else f"{part.component}:{name}"


def _error_of(part: _Part, main: _Part, pipe: Any, captured: Captured, layers: dict[str, Any]) -> float:
    """Relative error of the denoiser output with ``layers`` swapped into ``part``'s model."""
    swapper = part.swapper
    old = swapper.swap(layers)
    try:
        if part is main:
            return _rel_error(main.model, captured.calls, captured.outputs)
        calls = recondition(captured, first_step_calls(pipe, main.model, captured))
        return _rel_error(main.model, calls, captured.outputs)
    finally:
        swapper.swap(old)


class _Images:
    """End images of the captured prompts and seed, against the reference pipeline's."""

    def __init__(self, pipe: Any, captured: Captured, steps: int | None) -> None:
        self.pipe, self.captured, self.steps = pipe, captured, steps
        self.reference = self._images()

    def _images(self) -> list[Any]:
        from diffquant.pipeline import generate
        from diffquant.quality.metrics import to_tensor

        return [to_tensor(generate(self.pipe, p, seed=self.captured.seed, steps=self.steps).image).float()
                for p in self.captured.prompts]

    def mse(self, part: _Part, modules: tuple[str, ...], layers: dict[str, Any] | None = None) -> float:
        """Mean image MSE with ``modules`` of ``part`` quantized (the rest at reference);
        ``layers``: their quantized copies where already made."""
        if layers is None:
            layers = _quantized(part.backend, part.spec, part.model, modules)
        return self.mse_with([(part, {n: layers[n] for n in modules})])

    def mse_with(self, swaps: list[tuple[_Part, dict[str, Any]]]) -> float:
        """Mean image MSE with each part's given layers swapped in."""
        olds = []
        try:
            for part, layers in swaps:
                olds.append((part, part.swapper.swap(layers)))
            got = self._images()
        finally:
            for part, old in reversed(olds):
                part.swapper.swap(old)
        values = [float((a - b).pow(2).mean()) for a, b in zip(got, self.reference, strict=True)]
        return sum(values) / len(values)


def _psnr_of(mse: float) -> float:
    import math

    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
