"""A mixed recipe from a sensitivity ranking: keep the groups that buy the most error per extra
byte at a higher precision, within a byte budget.

Each group has a ladder: one type up where the backend has one (its error measured), then the
reference precision (error 0). The choice is greedy over rungs on (error removed) / (bytes added),
the classic approximation of this knapsack: each group's error is measured with that group alone
quantized, so the errors are treated as additive. A backend that cannot keep one module alone (torchao matches names by
substring, quanto by short name) keeps more than asked: those extra modules are counted in the
bytes, and a choice that would overrun the budget that way is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from diffquant.errors import DiffquantError
from diffquant.recipes.model import DEFAULT_TARGET, QuantSpec, Recipe
from diffquant.sensitivity.run import SensitivityResult, backend_for


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


def _cost(result: SensitivityResult, chosen: dict[str, str | None], kept: set[str]) -> int:
    """Bytes added over the uniform recipe: chosen modules at their new type, plus modules the
    backend keeps as well although nobody asked (collateral)."""
    total = 0
    for name, (ref, quant, up) in result.module_bytes.items():
        if name in chosen:
            total += (up if chosen[name] is not None else ref) - quant
        elif name in kept:
            total += ref - quant
    return total


def _steps(result: SensitivityResult) -> dict[str, list[tuple[str | None, float, int]]]:
    """Per group, its ladder of (type, error, bytes) above the recipe: one type up where the
    backend has one (measured), then the reference precision (error 0 by definition)."""
    ladders = {}
    for g in result.groups:
        ladder: list[tuple[str | None, float, int]] = []
        if result.upgrade:
            ladder.append((result.upgrade, g.rel_error_upgrade, g.bytes_upgrade))
        ladder.append((None, 0.0, g.bytes_ref))
        ladders[g.name] = ladder
    return ladders


def mix_recipe(result: SensitivityResult, recipe: Recipe, denoiser: Any, extra_bytes: int,
               components: dict[str, Any]) -> tuple[Recipe, list[MixChoice], int]:
    """The mixed recipe, the choices in order, and the bytes it adds over ``recipe``.

    Greedy over increments: each group can move one rung up its ladder (next type, then the
    reference precision); the rung with the most error removed per byte added goes next.
    """
    from diffquant.components import large_text_encoder_name
    from diffquant.recipes.catalog import BACKENDS

    spec = QuantSpec(result.spec["backend"], result.spec["type"], result.spec["target"],
                     tuple(sorted(result.spec["options"].items())), tuple(result.spec["skip_modules"]))
    backend = backend_for(spec)
    groups = {g.name: g for g in result.groups}
    ladders = _steps(result)
    level = {name: -1 for name in groups}  # -1: the recipe's own type
    blocked: set[str] = set()
    chosen: dict[str, str | None] = {}
    choices: list[MixChoice] = []
    spent = 0
    while True:
        best: tuple[float, str] | None = None
        for name, g in groups.items():
            if name in blocked or level[name] + 1 >= len(ladders[name]):
                continue
            err_now = g.rel_error if level[name] < 0 else ladders[name][level[name]][1]
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
        to_type, err_next, _ = ladders[name][level[name] + 1]
        trial = {**chosen, **{m: to_type for m in groups[name].modules}}
        trial_spec = backend.keep_precise(spec, trial, denoiser)
        kept = {n for n in result.module_bytes if backend.keeps_precise(trial_spec, n, denoiser)}
        cost = _cost(result, trial, kept)
        if cost > extra_bytes:
            blocked.add(name)
            continue
        err_now = groups[name].rel_error if level[name] < 0 else ladders[name][level[name]][1]
        level[name] += 1
        chosen = trial
        choices.append(MixChoice(name, to_type or "reference", err_now - err_next, cost - spent))
        spent = cost
    mixed = backend.keep_precise(spec, chosen, denoiser) if chosen else spec
    quant: list[QuantSpec] = []
    for item in recipe.quant:
        if item.target not in (DEFAULT_TARGET, result.denoiser) or item.backend != spec.backend:
            quant.append(item)
            continue
        quant.append(replace(mixed, target=result.denoiser))
        large = large_text_encoder_name(components)
        explicit = {q.target for q in recipe.quant}
        if item.target == DEFAULT_TARGET and large and large not in explicit \
                and not BACKENDS[item.backend].denoiser_only:
            quant.append(replace(item, target=large))
    from diffquant.recipes import parse_recipe

    # through its canonical string: the same order and hash as the recipe read back from a file
    return parse_recipe(replace(recipe, quant=tuple(quant)).name), choices, spent
