"""A sweep under a memory budget (``bench --budget``): plan first, refuse the recipes predicted not
to fit, and run the reference in full precision when it fits, else with the lightest offload that
does (quality needs a reference, and the users who need diffquant most cannot load one)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from diffquant.errors import DiffquantError

# Lightest first: what each offload costs in speed, from least to most.
OFFLOAD_LADDER = {
    "cuda": ("offload-model", "offload-group-block", "offload-group-leaf(stream)", "offload-group-leaf",
             "offload-sequential"),
    "cpu": ("offload-group-leaf(disk)",),  # the only offload that saves RAM on CPU
}


@dataclass(frozen=True)
class BudgetFit:
    reference: str  # the reference recipe to run (the one asked for, or it with an offload)
    reference_note: str | None  # why the reference changed
    refused: dict[str, str] = field(default_factory=dict)  # canonical recipe -> why it is not run
    predicted_bytes: dict[str, int] = field(default_factory=dict)  # canonical recipe -> predicted need


def fit_sweep(model: str, reference: str, recipes: Sequence[str], budget_bytes: int, *, device: str,
              height: int | None = None, width: int | None = None) -> BudgetFit:
    from diffquant.plan.budget import format_bytes
    from diffquant.plan.planner import plan_model
    from diffquant.recipes import load_recipe, parse_recipe

    dev = "cuda" if device.startswith("cuda") else device
    ref = load_recipe(reference)
    ladder = [] if ref.memory.offload != "none" else [f"{ref.name}+{o}" for o in OFFLOAD_LADDER.get(dev, ())]
    names: list[str] = []
    for text in [ref.name, *ladder, *recipes]:
        try:
            names.append(load_recipe(text).name)  # a .toml path too, as the sweep reads it
        except DiffquantError:
            continue  # the sweep turns it into an error row with the parse error
    plan = plan_model(model, list(dict.fromkeys(names)), device=dev, height=height, width=width)
    need = {r.recipe: max(r.memory.peak_bytes, r.memory.load_peak_bytes) for r in plan.recipes if r.memory}
    budget = format_bytes(budget_bytes)
    chosen, note = ref.name, None
    if need.get(ref.name, 0) > budget_bytes:
        fitting = [n for n in (parse_recipe(t).name for t in ladder) if need.get(n, budget_bytes + 1) <= budget_bytes]
        if not fitting:
            tried = ", ".join(f"{n} {format_bytes(need[n])}" for n in [ref.name, *ladder] if n in need)
            raise DiffquantError(f"The reference {ref.name!r} does not fit in {budget} even with offload "
                                 f"(predicted: {tried}).",
                                 hint="raise --budget, or pick a lighter --reference (e.g. a quantized recipe)")
        chosen = fitting[0]
        note = (f"reference {ref.name} is predicted to need {format_bytes(need[ref.name])}, over the {budget} "
                f"budget; it runs as {chosen} (predicted {format_bytes(need[chosen])})")
    refused = {}
    for r in plan.recipes:
        if r.recipe in (chosen, *ladder) or r.memory is None:
            continue
        if need[r.recipe] > budget_bytes:
            refused[r.recipe] = (f"Recipe {r.recipe!r} is predicted to need {format_bytes(need[r.recipe])}, over "
                                 f"the --budget {budget} (diffquant plan); not run.")
    return BudgetFit(reference=chosen, reference_note=note, refused=refused, predicted_bytes=need)
