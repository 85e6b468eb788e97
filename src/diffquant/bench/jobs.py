"""The types a sweep and its executors share: a planned run, the job an executor runs, the
executor protocol. Kept apart from ``sweep.py`` (planning, recording) and ``executors.py`` /
``executor_ray.py`` (running) so that each of those imports this and none imports another.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from diffquant.bench.runner import EventHandler, WorkerOutcome
from diffquant.bench.spec import RunSpec
from diffquant.store import RunRow

if TYPE_CHECKING:  # pragma: no cover
    from diffquant.recipes.model import Recipe


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class PlannedRun:
    index: int
    text: str  # as the user wrote it
    name: str  # canonical recipe string (the text itself if it did not parse)
    recipe_hash: str
    run_key: str
    problem: str | None = None  # why it will be an error row without a worker
    outcome_kind: str | None = None  # "invalid" | "unavailable" (with problem)
    existing: RunRow | None = None
    action: str = "run"  # "run" | "skip"
    compiled: bool = False
    note: str | None = None  # e.g. why the reference runs with offload (--budget)
    recipe: Recipe | None = None  # parsed once, here; its dict and hash go to the worker (None: invalid)


@dataclass
class Job:
    """One run handed to an executor. ``spec.image_dir`` is where its files must end up on *this*
    machine; ``workdir`` is a scratch folder here (the spec, the result, the worker's log)."""

    item: PlannedRun
    spec: RunSpec
    workdir: Path
    timeout_s: float | None
    cold_compile: bool  # fresh inductor/triton caches for this run (compile time as a first run sees it)
    argv: Sequence[str] | None = None  # test-only: replaces `python -m diffquant.bench.worker`
    on_event: EventHandler | None = None
    started_at: str | None = None  # set when the run starts (by the executor)
    process: int = 0  # which of the recipe's worker processes (bench --processes N), from 0
    extra: dict[str, Any] = field(default_factory=dict)


StartHandler = Callable[[Job], None]


class Executor(Protocol):
    name: str

    def run(self, jobs: Iterable[Job], on_start: StartHandler) -> Iterator[tuple[Job, WorkerOutcome]]:
        """Run each job, yielding ``(job, outcome)`` as each ends (in any order). ``on_start`` is
        called when a job is started or submitted. Pull ``jobs`` lazily: the sweep records rows
        that need no worker while it produces them, which keeps the local order of rows. If the
        consumer stops early (Ctrl-C), no run may be left running."""
        ...


def compile_cache_env(workdir: Path) -> dict[str, str]:
    """Private inductor/triton caches inside a run's work folder: a cold compile."""
    return {"TORCHINDUCTOR_CACHE_DIR": str(workdir / "inductor"), "TRITON_CACHE_DIR": str(workdir / "triton")}
