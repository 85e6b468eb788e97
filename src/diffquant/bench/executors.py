"""Where a sweep's runs execute: the seam between planning/recording (``sweep.py``) and running.

The sweep hands an executor its runs as ``Job``s (lazily, in plan order) and gets back each run's
``WorkerOutcome`` as it ends; only the sweep writes the database. Every executor runs the same
isolated worker (``runner.run_worker``: a fresh interpreter per run, whose crash, OOM kill or
timeout is an error outcome), so a row means the same whatever ran it.

- ``local`` (the default): one run at a time on this machine, exactly as before the seam existed.
- ``ray[:ADDRESS]``: each run is a Ray task on a cluster (``executor_ray.py``; ray imported only
  there, only when chosen).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from diffquant.bench.runner import EventHandler, WorkerOutcome, run_worker
from diffquant.bench.spec import RunSpec
from diffquant.errors import DiffquantError

if TYPE_CHECKING:  # pragma: no cover
    from diffquant.bench.sweep import PlannedRun

EXECUTORS = ("local", "ray")


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


class LocalExecutor:
    """One run at a time, here, in plan order."""

    name = "local"

    def run(self, jobs: Iterable[Job], on_start: StartHandler) -> Iterator[tuple[Job, WorkerOutcome]]:
        for job in jobs:
            on_start(job)
            outcome = run_worker(job.spec, job.workdir, timeout_s=job.timeout_s, on_event=job.on_event,
                                 argv=job.argv, extra_env=compile_cache_env(job.workdir) if job.cold_compile else {})
            yield job, outcome


def make_executor(spec: str | Executor | None, *, device: str = "cpu", cpus_per_run: float | None = None
                  ) -> Executor:
    """``local`` | ``ray`` | ``ray:ADDRESS`` (or an executor object, returned as is)."""
    if spec is None:
        return LocalExecutor()
    if not isinstance(spec, str):
        return spec
    kind, _, address = spec.strip().partition(":")
    kind = kind.lower()
    if kind == "local" and not address:
        if cpus_per_run is not None:
            raise DiffquantError("--cpus-per-run applies to the Ray executor only.",
                                 hint="drop it, or add --executor ray")
        return LocalExecutor()
    if kind == "ray":
        from diffquant.bench.executor_ray import RayExecutor

        return RayExecutor(address=address or None, device=device, cpus_per_run=cpus_per_run)
    raise DiffquantError(f"Unknown executor {spec!r}.", choices=["local", "ray", "ray:ADDRESS"], given=kind,
                         hint="--executor local (default), --executor ray (this machine's or $RAY_ADDRESS's "
                              "cluster) or --executor ray:HOST:PORT")
