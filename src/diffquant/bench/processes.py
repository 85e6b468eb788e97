"""One recipe measured in several fresh worker processes (``bench --processes N``): how their
outcomes become one run record.

Within one worker the steady calls agree closely, but a fresh worker of the same recipe, minutes
later on the same idle machine, can be faster or slower by more (docs/data/worker_spread.json:
bf16's p50 from 2.71 to 3.44 s over four workers, 27%). An interval over one worker's calls cannot see
that. With N processes the sweep runs every recipe N times, in rounds (reference, A, B, ...,
reference, A, B, ...) so that each recipe's processes are spread over the sweep, and files one row:

- every metric of the **first** process: memory, load, first call, compile time (its first call
  minus its own p50), step times, page faults, images (what a first run costs; later processes
  save no images);
- the steady calls of **all** processes: ``call.latency_s.*`` over the pooled calls, each
  process's calls in ``call.latency_s.by_process`` and its p50 in ``call.latency_s.process_p50s``
  (the ratio's interval resamples processes, then calls: ``store.summary.latency_groups``);
- ``host.*`` contention: the worst over the processes (contended if any was);
- wall times (``run.wall_s`` ...) also summed over the processes, as ``<name>.all_processes``;
- ``run.processes``: N.

A process that fails makes the row that failure, saying which process it was (``sweep.py``).
No torch import here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from diffquant.bench.measure import latency_stats, percentile
from diffquant.bench.runner import WorkerOutcome
from diffquant.store.summary import LATENCY_BY_PROCESS, LATENCY_PROCESS_P50S, latency_samples

LATENCY = "call.latency_s"
# the host's load during the run: a row is as contended as its most contended process
WORST_OF = ("host.loadavg_1m.max", "host.load_others.max", "host.contended")
# where the time went, summed over the processes as ``<name>.all_processes`` (the harness's overhead)
SUMMED = ("run.wall_s", "worker.wall_s", "worker.import_s", "load.wall_s", "gen.wall_s")


def merge_outcomes(outcomes: Sequence[WorkerOutcome]) -> WorkerOutcome:
    """One outcome from the successful processes of one recipe, in process order (see the module's
    text; a failed process is the sweep's business: its row is that failure)."""
    if not outcomes or any(o.status != "ok" for o in outcomes):
        raise ValueError("merge_outcomes takes one or more successful outcomes")
    first = outcomes[0]
    metrics: dict[str, Any] = dict(first.metrics)
    groups = [latency_samples(o.metrics) for o in outcomes]
    pooled = [value for group in groups for value in group]
    metrics.update(latency_stats(LATENCY, pooled, keep_samples=True))
    metrics[LATENCY_BY_PROCESS] = [[round(float(v), 6) for v in group] for group in groups]
    metrics[LATENCY_PROCESS_P50S] = [percentile(group, 50) for group in groups]
    for name in WORST_OF:
        values = _numbers_of(outcomes, name)
        metrics[name] = max(values) if values else first.metrics.get(name)
    for name in SUMMED:
        if values := _numbers_of(outcomes, name):
            metrics[f"{name}.all_processes"] = sum(values)
    metrics["run.processes"] = len(outcomes)
    return replace(first, metrics=metrics, wall_s=sum(o.wall_s for o in outcomes))


def _numbers_of(outcomes: Sequence[WorkerOutcome], name: str) -> list[float]:
    """The processes' values of metric ``name``, where they recorded a number."""
    return [o.metrics[name] for o in outcomes if isinstance(o.metrics.get(name), (int, float))]
