"""What a results database measured for an export's model and recipe: the seed's columns, the
quality scores against the reference with their confidence intervals, and sample image pairs.
No torch import here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffquant.errors import DiffquantError


@dataclass(frozen=True)
class SamplePair:
    prompt: str
    seed: int
    image: Path  # the run's image
    reference: Path | None  # the reference run's image for the same prompt and seed


@dataclass(frozen=True)
class Measured:
    db_path: Path
    run_id: int
    sweep_id: str
    recipe: str
    device: str
    settings: dict[str, Any]
    reference_recipe: str | None
    reference_run_id: int | None
    row: dict[str, Any]  # store.summary.summary_rows() row of the run (values in MiB / s, ratios)
    reference_row: dict[str, Any] | None
    quality: dict[str, Any]  # metric -> quality.store.QualityRow with status "ok"
    samples: tuple[SamplePair, ...]
    env: dict[str, Any]
    finished_at: str


def _same_quantization(run_recipe: str, recipe: dict[str, Any]) -> bool:
    from diffquant.recipes import parse_recipe
    from diffquant.recipes.model import Recipe

    try:
        theirs = parse_recipe(run_recipe)
    except DiffquantError:
        return False
    mine = Recipe.from_dict(recipe)
    return theirs.quant == mine.quant and theirs.dtype == mine.dtype


def find_measured(db_path: Path, model: str, recipe: dict[str, Any], recipe_hash: str,
                  max_samples: int = 4) -> Measured:
    """The latest successful run of ``model`` with this recipe (same hash, else the same
    quantization with other memory/compile options) and its sweep's reference run."""
    from diffquant.quality.store import open_existing, read_quality
    from diffquant.store.summary import run_device, summary_rows

    with open_existing(Path(db_path)) as db:
        runs = [r for r in db.runs(model=model) if r.ok]
        exact = [r for r in runs if r.recipe_hash == recipe_hash]
        matches = exact or [r for r in runs if _same_quantization(r.recipe, recipe)]
        if not matches:
            recipes = sorted({r.recipe for r in runs})
            raise DiffquantError(
                f"{str(db_path)!r} has no successful run of {model!r} with this recipe.",
                hint=(f"its runs of {model!r}: {', '.join(recipes)}; " if recipes else
                      f"it has no successful run of {model!r}; ")
                     + "run `diffquant bench MODEL --recipes RECIPE --db FILE` first, or leave out --card-from")
        run = matches[-1]
        quality = {m: q for m, q in read_quality(db.connection).get(run.id, {}).items() if q.status == "ok"}
        sweep = [r for r in db.runs(sweep_id=run.sweep_id)]
        ref_ids = {q.reference_run_id for q in quality.values() if q.reference_run_id is not None}
        reference = next((r for r in sweep if r.id in ref_ids), None)
        if reference is None:  # unscored: the store's rule (the latest bf16 run of the sweep)
            reference = next((r for r in reversed(sweep) if r.ok and r.recipe == "bf16" and r.id != run.id), None)
        ref_recipe = reference.recipe if reference else None
        rows = {r["id"]: r for r in summary_rows(sweep, reference=ref_recipe or "bf16")}
        images = db.images(run.id)
        ref_images = {(im.prompt_index, im.seed): im for im in db.images(reference.id)} if reference else {}
        base = Path(db.path).parent
        samples = []
        for im in images[:max_samples]:
            ref = ref_images.get((im.prompt_index, im.seed))
            samples.append(SamplePair(im.prompt, im.seed, _abs(im.path, base),
                                      _abs(ref.path, base) if ref else None))
        return Measured(db_path=Path(db.path), run_id=run.id, sweep_id=run.sweep_id, recipe=run.recipe,
                        device=run_device(run), settings=dict(run.settings), reference_recipe=ref_recipe,
                        reference_run_id=reference.id if reference else None, row=rows[run.id],
                        reference_row=rows.get(reference.id) if reference else None, quality=quality,
                        samples=tuple(samples), env=dict(run.env), finished_at=run.finished_at)


def _abs(path: str, base: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else base / p
