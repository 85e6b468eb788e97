"""Quality against the reference: a metric registry, scoring, bootstrap CIs and their tables.

The reference is the unquantized run (recipe ``bf16`` unless told otherwise) of the same model,
device and pixel settings; each image of a quantized run is compared with the reference image of
the same prompt index and seed. Importing this package is cheap: torch, torchmetrics and
transformers load only when a metric runs.

    score_database(db_path, reference="bf16", metrics=None)   # used by ``diffquant bench``/``score``
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from diffquant.quality.registry import METRICS, MetricInfo, MetricOptions, MetricUnavailable, register_metric

if TYPE_CHECKING:  # pragma: no cover
    from diffquant.quality.scoring import BootstrapSettings, MetricResult

__all__ = ["METRICS", "MetricInfo", "MetricOptions", "MetricUnavailable", "register_metric", "score_database",
           "score_db"]


def score_db(db_path: Path, reference: str = "bf16", metrics: list[str] | None = None, *,
             options: MetricOptions | None = None, bootstrap: BootstrapSettings | None = None,
             force: bool = True) -> list[MetricResult]:
    """Score the successful runs of the database, store the results and return them.

    With ``force=False`` a (run, metric) whose stored score is current - computed (or found to be
    the reference) against the same reference run with the same bootstrap settings - is skipped;
    unavailable and failed scores are always retried.
    """
    from diffquant.quality.data import canonical_recipe
    from diffquant.quality.scoring import BootstrapSettings, score_runs
    from diffquant.quality.store import current_scores, load_runs, open_existing, write_results

    infos = METRICS.resolve(metrics)  # unknown names fail before any work
    boot = bootstrap or BootstrapSettings()
    reference = canonical_recipe(reference)
    with open_existing(Path(db_path)) as db:
        runs = load_runs(db)
        keep = None if force else current_scores(db.connection, reference, boot)
        results = score_runs(runs, reference, [i.name for i in infos], options, boot, keep=keep)
        write_results(db.connection, results, reference, boot)
    return results


def score_database(db_path: Path, reference: str = "bf16", metrics: list[str] | None = None, *,
                   force: bool = False) -> None:
    """Score the database's runs against ``reference`` with ``metrics`` (all when None).

    Scores that are still current are kept (``force=True`` recomputes everything), so calling
    this after every sweep costs only the new runs.
    """
    score_db(db_path, reference, metrics, force=force)
