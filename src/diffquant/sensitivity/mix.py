"""A mixed recipe from a sensitivity ranking: keep the groups that buy the most error per extra
byte at a higher precision, within a byte budget.

The choice is greedy on (error removed) / (bytes added), the classic approximation of this
0/1 knapsack: each group's error is measured with that group alone quantized, so the errors are
treated as additive. A backend that cannot keep one module alone (torchao matches names by
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


def mix_recipe(result: SensitivityResult, recipe: Recipe, denoiser: Any, extra_bytes: int,
               components: dict[str, Any]) -> tuple[Recipe, list[MixChoice], int]:
    """The mixed recipe, the choices in order, and the bytes it adds over ``recipe``."""
    from diffquant.components import large_text_encoder_name
    from diffquant.recipes.catalog import BACKENDS

    spec = QuantSpec(result.spec["backend"], result.spec["type"], result.spec["target"],
                     tuple(sorted(result.spec["options"].items())), tuple(result.spec["skip_modules"]))
    backend = backend_for(spec)
    to_type = result.upgrade  # None: back to the reference precision
    ranked = sorted(result.groups, key=lambda g: -(g.rel_error - g.rel_error_upgrade)
                    / max(1, g.bytes_upgrade - g.bytes_quant if to_type else g.bytes_ref - g.bytes_quant))
    chosen: dict[str, str | None] = {}
    choices: list[MixChoice] = []
    spent = 0
    for group in ranked:
        removed = group.rel_error - group.rel_error_upgrade
        if removed <= 0:
            continue
        trial = {**chosen, **{m: to_type for m in group.modules}}
        trial_spec = backend.keep_precise(spec, trial, denoiser)
        kept = {n for n in result.module_bytes if backend.keeps_precise(trial_spec, n, denoiser)}
        cost = _cost(result, trial, kept)
        if cost > extra_bytes:
            continue
        chosen, spent = trial, cost
        choices.append(MixChoice(group.name, to_type or "reference", removed, cost - sum(c.bytes_added
                                                                                         for c in choices)))
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
    return replace(recipe, quant=tuple(quant)), choices, spent
