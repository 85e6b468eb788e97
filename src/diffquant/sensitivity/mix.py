"""A mixed recipe from a sensitivity ranking: keep the groups that buy the most error per extra
byte at a higher precision, within a byte budget. The groups of the denoiser and of the text
encoders compete in one ranking (their errors are on one scale: the denoiser's output).

Each group has a ladder: one type up where the backend has one (its error measured), then the
reference precision (error 0). The choice is greedy over rungs on (error removed) / (bytes added),
the classic approximation of this knapsack, treating the groups' errors as additive. What a
group's error means comes from the sweep's context: "alone", the error it causes by itself (the
rest at reference precision); "uniform", the error its promotion removes from the uniform recipe
(leave-one-out), which is what a mix buys when few groups are kept. Either way it is on the end
image's scale where the sweep calibrated it. A backend that cannot keep one module alone (torchao
matches names by substring, quanto by short name) keeps more than asked: those extra modules are
counted in the bytes, and a choice that would overrun the budget that way is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from diffquant.errors import DiffquantError
from diffquant.recipes.model import QuantSpec, Recipe
from diffquant.sensitivity.run import GroupResult, SensitivityResult, backend_for


@dataclass(frozen=True)
class MixChoice:
    group: str
    to_type: str  # the type the group moves to ("reference" = the recipe's unquantized dtype)
    error_removed: float
    bytes_added: int


def budget_from(result: SensitivityResult, extra: str | int) -> int:
    """Extra bytes allowed: an int, or '10%' of the recipe's bytes for the measured layers."""
    if isinstance(extra, int):
        return extra
    text = str(extra).strip()
    try:
        if text.endswith("%"):
            return int(float(text[:-1]) / 100 * result.total_quant_bytes())
        return int(float(text))
    except ValueError:
        raise DiffquantError(f"Cannot read the extra-memory budget {extra!r}.",
                             hint="write a percentage of the quantized layers' bytes (10%) or a byte count "
                                  "(5000000)") from None


def _spec_of(data: dict[str, Any]) -> QuantSpec:
    return QuantSpec(data["backend"], data["type"], data["target"], tuple(sorted(data["options"].items())),
                     tuple(data["skip_modules"]))


@dataclass
class _Component:
    """What the mix needs per measured component."""
    spec: QuantSpec
    model: Any
    upgrade: str | None
    module_bytes: dict[str, tuple[int, int, int]]

    @property
    def backend(self) -> Any:
        return backend_for(self.spec)


def _components(result: SensitivityResult, models: Any) -> dict[str, _Component]:
    models = models if isinstance(models, dict) else {result.denoiser: models}
    out = {result.denoiser: _Component(_spec_of(result.spec), models[result.denoiser], result.upgrade,
                                       result.module_bytes)}
    for name, part in result.encoders.items():
        out[name] = _Component(_spec_of(part.spec), models[name], part.upgrade, part.module_bytes)
    return out


def _cost(parts: dict[str, _Component], chosen: dict[str, dict[str, str | None]],
          kept: dict[str, set[str]]) -> int:
    """Bytes added over the uniform recipe: chosen modules at their new type, plus modules the
    backend keeps as well although nobody asked (collateral)."""
    total = 0
    for component, part in parts.items():
        mine = chosen.get(component, {})
        for name, (ref, quant, up) in part.module_bytes.items():
            if name in mine:
                total += (up if mine[name] is not None else ref) - quant
            elif name in kept.get(component, set()):
                total += ref - quant
    return total


def _steps(result: SensitivityResult, parts: dict[str, _Component]
           ) -> dict[str, list[tuple[str | None, float, int]]]:
    """Per group, its ladder of (type, error, bytes) above the recipe: one type up where the
    backend has one (measured), then the reference precision (error 0 by definition)."""
    ladders = {}
    for g in result.groups:
        ladder: list[tuple[str | None, float, int]] = []
        upgrade = parts[result.component_of(g)].upgrade
        if upgrade:  # the upgrade's proxy error, at the group's own rate into the end image
            rate = _error(g) / g.rel_error if g.rel_error else 0.0
            ladder.append((upgrade, g.rel_error_upgrade * rate, g.bytes_upgrade))
        ladder.append((None, 0.0, g.bytes_ref))
        ladders[g.name] = ladder
    return ladders


def _error(group: GroupResult) -> float:
    """What the mix removes: the end-image error where the sweep calibrated the groups to that
    scale (measured for the top groups, estimated for the rest), else the denoiser-output error."""
    return group.image_error() if group.image_mse_est else group.rel_error


def _mixed_specs(parts: dict[str, _Component], chosen: dict[str, dict[str, str | None]]) -> dict[str, QuantSpec]:
    return {c: (part.backend.keep_precise(part.spec, chosen[c], part.model) if chosen.get(c) else part.spec)
            for c, part in parts.items()}


def mix_recipe(result: SensitivityResult, recipe: Recipe, models: Any, extra_bytes: int,
               components: dict[str, Any]) -> tuple[Recipe, list[MixChoice], int]:
    """The mixed recipe, the choices in order, and the bytes it adds over ``recipe``.

    ``models``: the reference models by component, as ``measure_sensitivity`` returns them (or
    the denoiser alone). Greedy over increments across every measured component: each group can
    move one rung up its ladder (next type, then the reference precision); the rung with the most
    error removed per byte added goes next. Each component's choice is written in its own
    backend's options, for that component (``…@transformer+…(skip=…)@text_encoder_2``).
    """
    from diffquant.components import resolve_targets

    parts = _components(result, models)
    groups = {g.name: g for g in result.groups}
    ladders = _steps(result, parts)
    level = {name: -1 for name in groups}  # -1: the recipe's own type
    blocked: set[str] = set()
    chosen: dict[str, dict[str, str | None]] = {}
    choices: list[MixChoice] = []
    spent = 0
    while True:
        best: tuple[float, str] | None = None
        for name, g in groups.items():
            if name in blocked or level[name] + 1 >= len(ladders[name]):
                continue
            err_now = _error(g) if level[name] < 0 else ladders[name][level[name]][1]
            bytes_now = g.bytes_quant if level[name] < 0 else ladders[name][level[name]][2]
            _, err_next, bytes_next = ladders[name][level[name] + 1]
            removed = err_now - err_next
            if removed <= 0:
                blocked.add(name)
                continue
            ratio = removed / max(1, bytes_next - bytes_now)
            if best is None or ratio > best[0]:
                best = (ratio, name)
        if best is None:
            break
        name = best[1]
        component = result.component_of(groups[name])
        to_type, err_next, _ = ladders[name][level[name] + 1]
        trial = {**chosen, component: {**chosen.get(component, {}), **{m: to_type for m in groups[name].modules}}}
        specs = _mixed_specs(parts, trial)
        kept = {c: {n for n in part.module_bytes if part.backend.keeps_precise(specs[c], n, part.model)}
                for c, part in parts.items()}
        cost = _cost(parts, trial, kept)
        if cost > extra_bytes:
            blocked.add(name)
            continue
        err_now = _error(groups[name]) if level[name] < 0 else ladders[name][level[name]][1]
        level[name] += 1
        chosen = trial
        choices.append(MixChoice(name, to_type or "reference", err_now - err_next, cost - spent))
        spent = cost
    mixed = _mixed_specs(parts, chosen)
    targets = resolve_targets(recipe, components)
    quant = tuple(replace(mixed.get(component, spec), target=component) for component, spec in targets.items())
    from diffquant.recipes import parse_recipe

    # through its canonical string: the same order and hash as the recipe read back from a file
    return parse_recipe(replace(recipe, quant=quant).name), choices, spent
