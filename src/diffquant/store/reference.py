"""The one rule for "the reference" of a run, used by the table's ratios (``store.summary``), the
quality scores (``quality.data.find_reference``, the arena) and the report (``report.collect``).

The reference of a run is a successful run of the reference recipe (recipes compared by their
canonical spelling) with the same model and the same pixel-changing settings (the device too: CPU
and CUDA kernels round differently). Among several, one from the run's own sweep is preferred,
then the most recent (finish time; a tie goes to the later one in the list). A run of the reference recipe is its own reference.

Measurements (latency, memory) compare only within one sweep (``same_sweep_only``): runs of other
sweeps ran at other times, on a host under another load. Images compare across sweeps.
No torch import here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Protocol, TypeVar

from diffquant.errors import DiffquantError

# Settings that change the pixels (the device too: CPU and CUDA kernels round differently);
# runs are compared image to image only when these agree.
IMAGE_SETTINGS = ("device", "steps", "num_inference_steps", "height", "width", "guidance_scale", "true_cfg_scale",
                  "max_sequence_length", "negative_prompt", "scheduler", "output_type")


class RunLike(Protocol):
    """What the rule reads of a run (``store.RunRow`` and ``quality.data.RunInfo`` both have it)."""

    id: Any
    sweep_id: Any
    model: str
    recipe: str
    settings: dict[str, Any]
    started_at: Any
    finished_at: Any

    @property
    def ok(self) -> bool: ...


R = TypeVar("R", bound=RunLike)


@lru_cache(maxsize=4096)
def canonical_recipe(name: str) -> str:
    """The canonical spelling of a recipe string (the string itself if it does not parse)."""
    from diffquant.recipes import parse_recipe

    try:
        return parse_recipe(name).name
    except (DiffquantError, ValueError):
        return name.strip()


def image_settings(settings: dict[str, Any]) -> str:
    """The settings that change the pixels, as a comparable string."""
    picked = {k: settings[k] for k in IMAGE_SETTINGS if k in settings}
    return json.dumps(picked, sort_keys=True, default=str)


def settings_label(settings: dict[str, Any]) -> str:
    """Short human label: ``64x64, 2 steps, guidance 3.5``."""
    parts = []
    if "width" in settings and "height" in settings:
        parts.append(f"{settings['width']}x{settings['height']}")
    steps = settings.get("steps", settings.get("num_inference_steps"))
    if steps is not None:
        parts.append(f"{steps} steps")
    if settings.get("guidance_scale") is not None:
        parts.append(f"guidance {settings['guidance_scale']}")
    if settings.get("true_cfg_scale") is not None:
        parts.append(f"true CFG {settings['true_cfg_scale']}")
    return ", ".join(parts)


def comparison_group(run: RunLike) -> tuple[str, str]:
    """Runs in the same group are comparable image to image: same model and pixel settings."""
    return (run.model, image_settings(run.settings))


def choose_reference(run: R, runs: Sequence[R], reference: str, *, same_sweep_only: bool = False
                     ) -> tuple[R | None, str]:
    """The reference run of ``run`` among ``runs`` (see the module's docstring), or None and why."""
    want = canonical_recipe(reference)
    same_recipe = [r for r in runs if r.ok and canonical_recipe(r.recipe) == want]
    if not same_recipe:
        return None, f"no successful run of the reference recipe {want!r} in the database"
    group = comparison_group(run)
    candidates = [r for r in same_recipe if comparison_group(r) == group
                  and (not same_sweep_only or r.sweep_id == run.sweep_id)]
    if not candidates:
        scope = " in the same sweep" if same_sweep_only else ""
        return None, (f"no successful {want!r} run of {run.model} with the same settings{scope} "
                      f"({settings_label(run.settings) or 'settings differ'})")
    if any(r is run or r == run for r in candidates):  # the run itself (not by id: unsaved rows share id 0)
        return run, ""
    same_sweep = run.sweep_id is not None

    def preference(r: R) -> tuple[bool, str]:
        return (same_sweep and r.sweep_id == run.sweep_id, str(r.finished_at or r.started_at or ""))

    # a tie goes to the later one in ``runs``
    return max(enumerate(candidates), key=lambda item: (preference(item[1]), item[0]))[1], ""
