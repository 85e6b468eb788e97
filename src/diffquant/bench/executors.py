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

from collections.abc import Iterable, Iterator

from diffquant.bench.jobs import Executor, Job, StartHandler, compile_cache_env
from diffquant.bench.runner import WorkerOutcome, run_worker
from diffquant.errors import DiffquantError

__all__ = ["EXECUTORS", "Executor", "Job", "LocalExecutor", "StartHandler", "compile_cache_env", "make_executor"]

EXECUTORS = ("local", "ray")


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
