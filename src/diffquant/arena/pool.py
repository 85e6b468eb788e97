"""Which images may be shown together: each quantized run's images beside its reference run's
images of the same prompt and seed. The reference is chosen by the one rule the quality scores
use (:func:`diffquant.quality.data.find_reference`), so the arena compares what ``score`` compares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from diffquant.errors import DiffquantError
from diffquant.quality.data import RunInfo, canonical_recipe, find_reference, match_images

MODES = ("pairwise", "grid")


@dataclass(frozen=True)
class Pair:
    """One quantized image and the reference image of the same prompt and seed."""

    reference_run_id: int
    run_id: int
    reference_image_id: int
    image_id: int
    prompt: str
    prompt_index: int
    seed: int


@dataclass(frozen=True)
class Grid:
    """The reference image of one prompt and seed among the quantized images of the same key."""

    reference_run_id: int
    reference_image_id: int
    entries: tuple[tuple[int, int], ...]  # (run_id, image_id), one per quantized run
    prompt: str
    prompt_index: int
    seed: int


@dataclass(frozen=True)
class Pool:
    pairs: dict[int, tuple[Pair, ...]]  # run id -> its pairs
    grids: tuple[Grid, ...]
    recipes: dict[int, str]  # run id -> recipe, for every run in the pool (reference included)

    @property
    def run_ids(self) -> list[int]:
        return sorted(self.pairs)


def build_pool(runs: Sequence[RunInfo], *, reference: str = "bf16", recipes: Sequence[str] | None = None,
               sweep: str | None = None) -> Pool:
    """The pool of a database's runs (``quality.store.load_runs``), optionally only some recipes
    or one sweep. Raises a :class:`DiffquantError` saying why when nothing can be shown."""
    runs = [r for r in runs if r.ok and r.images and (sweep is None or r.sweep_id == sweep)]
    ref_name = canonical_recipe(reference)
    wanted = None if not recipes else {canonical_recipe(r) for r in recipes}
    candidates = [r for r in runs if canonical_recipe(r.recipe) != ref_name
                  and (wanted is None or canonical_recipe(r.recipe) in wanted)]
    if wanted is not None:
        missing = wanted - {canonical_recipe(r.recipe) for r in candidates}
        if missing:
            present = {canonical_recipe(r.recipe) for r in runs} - {ref_name}
            raise DiffquantError(f"No successful run with images for recipe(s) {', '.join(sorted(missing))}.",
                                 choices=present, given=min(missing),
                                 hint="pick recipes that the sweep ran (see `diffquant results`)")
    pairs: dict[int, tuple[Pair, ...]] = {}
    names: dict[int, str] = {}
    grid_members: dict[tuple[int, int, int], list[tuple[int, int, Pair]]] = {}
    reasons: list[str] = []
    for run in candidates:
        ref, why = find_reference(run, runs, reference)
        if ref is None or ref.id == run.id:
            reasons.append(f"{run.recipe} (#{run.id}): {why or 'it is the reference'}")
            continue
        matched = [Pair(int(ref.id), int(run.id), int(ri.id), int(im.id), im.prompt, im.prompt_index, im.seed)
                   for im, ri in match_images(run, ref)]
        if not matched:
            reasons.append(f"{run.recipe} (#{run.id}): no image with the reference's prompt and seed")
            continue
        pairs[int(run.id)] = tuple(matched)
        names[int(run.id)], names[int(ref.id)] = run.recipe, ref.recipe
        for p in matched:
            grid_members.setdefault((p.reference_run_id, p.prompt_index, p.seed), []).append(
                (p.run_id, p.image_id, p))
    if not pairs:
        detail = "; ".join(reasons[:5]) or "the database holds no successful run with images"
        raise DiffquantError(f"Nothing to show: no quantized image has a {ref_name!r} reference image ({detail}).",
                             hint="run `diffquant bench` with the reference recipe in the sweep, or pass "
                                  "--reference")
    grids = tuple(Grid(key[0], members[0][2].reference_image_id,
                       tuple((run_id, image_id) for run_id, image_id, _ in sorted(members)),
                       members[0][2].prompt, key[1], key[2])
                  for key, members in sorted(grid_members.items()))
    return Pool(pairs=pairs, grids=grids, recipes=names)


def image_path(stored: str, db_path: Path) -> Path:
    """An image row's file: absolute, or relative to the database's folder (as the quality code reads it)."""
    path = Path(stored)
    return path if path.is_absolute() else Path(db_path).parent / path
