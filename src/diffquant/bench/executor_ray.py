"""The Ray executor: each run of a sweep is a Ray task that runs the same isolated worker.

A task asks for what a run needs (one GPU on CUDA, CPUs on CPU) and, on whichever node Ray puts
it, starts ``python -m diffquant.bench.worker`` through ``runner.run_worker`` in a scratch folder
of that node: a crash, OOM kill or timeout of the worker is an ordinary error outcome there. The
task returns the outcome with the bytes of every image and latents file; the driver writes them
into its own image folder and the sweep records the row. Nodes never touch the database.

A failure of Ray itself (the node died, the task's Ray worker died, the task was lost or killed
for memory by Ray) becomes an error outcome with Ray's reason (``run.outcome`` = ``lost``). Ray
does not retry a run (``max_retries=0``): a half-measured run re-run elsewhere would look like an
ordinary one; ``--retry-errors`` re-runs lost runs on purpose.

``ray`` is imported only here, and this module only when ``--executor ray`` is chosen.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from diffquant.atomic import write_bytes_atomic
from diffquant.bench.jobs import Job, StartHandler, compile_cache_env, now_iso
from diffquant.bench.runner import WorkerOutcome, run_worker
from diffquant.bench.spec import RunSpec
from diffquant.errors import DiffquantError

CANCEL_GRACE_S = 10.0  # after a driver interrupt: time for cancelled runs to kill their workers


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise DiffquantError("The Ray executor needs the 'ray' package, which is not installed.",
                             hint="pip install 'diffquant[ray]' (on the driver and on every node), "
                                  "or run without --executor ray") from exc
    return ray


class RayExecutor:
    """Runs jobs as Ray tasks on the cluster at ``address`` (None: Ray's own rule: $RAY_ADDRESS, a
    cluster started on this machine with ``ray start``, else a new local one for this sweep)."""

    name = "ray"

    def __init__(self, address: str | None = None, *, device: str = "cpu", cpus_per_run: float | None = None,
                 init_kwargs: dict[str, Any] | None = None) -> None:
        if device.startswith("cuda:") and device != "cuda:0":
            raise DiffquantError(f"Under Ray a run gets its GPU from Ray; device {device!r} names one.",
                                 hint="give --device cuda (Ray sets CUDA_VISIBLE_DEVICES for each run)")
        if cpus_per_run is not None and cpus_per_run <= 0:
            raise DiffquantError(f"--cpus-per-run must be positive, got {cpus_per_run:g}.")
        if importlib.util.find_spec("ray") is None:  # say so before the sweep starts, without importing it
            import_ray()
        self.address = address
        self.device = device
        self.cpus_per_run = cpus_per_run
        self.init_kwargs = dict(init_kwargs or {})
        self._addresses: dict[str, str] = {}  # Ray node id -> its address, for the rows

    # -- driver side -------------------------------------------------------------------------
    def run(self, jobs: Iterable[Job], on_start: StartHandler) -> Iterator[tuple[Job, WorkerOutcome]]:
        ray = import_ray()
        owned = not ray.is_initialized()  # else a caller's ray.init chose the cluster: use it as it is
        if owned:
            previous = signal.getsignal(signal.SIGTERM)
            ray.init(address=self.address, log_to_driver=False, **self.init_kwargs)
            if previous is not None and threading.current_thread() is threading.main_thread():
                # ray.init makes SIGTERM a sys.exit; the sweep's handler (a `kill` unwinds like Ctrl-C) stays
                signal.signal(signal.SIGTERM, previous)
        try:
            nodes = ray.nodes()
            resources = self.resources(nodes)
            self._addresses = {n.get("NodeID"): n.get("NodeManagerAddress") for n in nodes}
            task = ray.remote(run_on_node)
            pending: dict[Any, tuple[Job, float]] = {}
            try:
                for job in jobs:
                    on_start(job)
                    fault = job.spec.fault if (job.spec.fault or "").startswith("ray-") else None
                    spec = replace(job.spec, fault=None) if fault else job.spec
                    ref = task.options(name=f"diffquant {job.item.name}"[:200], max_retries=0, **resources).remote(
                        spec.to_json(), job.timeout_s, job.cold_compile, list(job.argv) if job.argv else None, fault)
                    pending[ref] = (job, time.time())
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    job, submitted = pending.pop(ready[0])
                    yield job, self._collect(ray, ready[0], job, submitted, resources)
            finally:
                if pending:  # the driver was interrupted: no run may go on without it
                    _cancel(ray, list(pending))
        finally:
            if owned:
                ray.shutdown()

    def resources(self, nodes: Sequence[dict[str, Any]]) -> dict[str, float]:
        """What one run asks for. CUDA: one GPU and the CPUs that come with it (a node's CPUs over
        its GPUs). CPU: a whole node (the largest) unless ``cpus_per_run`` says otherwise, since
        runs sharing CPUs slow each other and their timings mean nothing; Ray sets the worker's
        OMP_NUM_THREADS to the CPUs it got."""
        alive = [n.get("Resources") or {} for n in nodes if n.get("Alive", True)]
        on_cuda = self.device.startswith("cuda")
        if on_cuda:
            per_gpu = [int(r.get("CPU", 1) // r["GPU"]) for r in alive if r.get("GPU", 0) >= 1]
            want = {"num_gpus": 1.0, "num_cpus": float(self.cpus_per_run or max([1, *per_gpu]))}
        else:
            want = {"num_gpus": 0.0, "num_cpus": float(self.cpus_per_run or max([1.0, *(r.get("CPU", 0) for r in alive)]))}
        fits = [r for r in alive if r.get("CPU", 0) >= want["num_cpus"] and r.get("GPU", 0) >= want["num_gpus"]]
        if not fits:
            have = "; ".join(f"{r.get('CPU', 0):g} CPU, {r.get('GPU', 0):g} GPU" for r in alive) or "no live nodes"
            raise DiffquantError(
                f"No node of the Ray cluster can take a run needing {want['num_cpus']:g} CPU and "
                f"{want['num_gpus']:g} GPU (nodes: {have}).",
                hint="lower --cpus-per-run, add a node that fits (`ray start --address ...`), or use --device cpu"
                     if on_cuda else "lower --cpus-per-run, or add a node (`ray start --address ...`)")
        return want

    def _collect(self, ray: Any, ref: Any, job: Job, submitted: float, resources: dict[str, float]
                 ) -> WorkerOutcome:
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as exc:
            return lost_outcome(exc, time.time() - submitted, ray.exceptions)
        outcome: WorkerOutcome = result["outcome"]
        if outcome.status == "ok":
            outcome.images = _write_files(outcome.images, result["files"], Path(job.spec.image_dir))
        job.started_at = result["started_at"]
        if result["node_id"] not in self._addresses:  # a node that joined during the sweep
            self._addresses = {n.get("NodeID"): n.get("NodeManagerAddress") for n in ray.nodes()}
        outcome.metrics.update({"run.executor": "ray", "ray.node_ip": self._addresses.get(result["node_id"]),
                                "ray.node_id": result["node_id"],
                                "ray.hostname": result["hostname"], "ray.num_cpus": resources["num_cpus"],
                                "ray.num_gpus": resources["num_gpus"],
                                "ray.queue_s": max(result["started"] - submitted, 0.0)})
        return outcome


def lost_outcome(exc: BaseException, wall_s: float, exceptions: Any) -> WorkerOutcome:
    """Ray's failure as an error outcome: its exception type and message are the reason."""
    cause: BaseException = exc
    if isinstance(exc, exceptions.RayTaskError) and isinstance(exc.cause, exceptions.RayError):
        cause = exc.cause  # a Ray failure raised inside the task (e.g. an object it needed was lost)
    reason = str(cause).strip() or "(no message)"
    error = (f"Ray lost this run ({type(cause).__name__}): {reason}\n"
             "(the run was not retried; --retry-errors runs it again)")
    metrics = {"run.outcome": "lost", "ray.error": type(cause).__name__, "run.wall_s": wall_s,
               "run.returncode": None, "run.executor": "ray"}
    return WorkerOutcome("error", error, metrics, None, [], None, False, wall_s, "")


def _cancel(ray: Any, refs: list[Any]) -> None:
    """Cancel runs still queued or running: gently first (the task kills its worker's process
    group), then by killing the task's Ray worker (the diffquant worker dies with it: it asked
    the kernel for SIGKILL when its parent dies)."""
    for ref in refs:
        ray.cancel(ref, force=False)
    try:
        _, still = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_S)
    except Exception:  # noqa: BLE001 - best effort while unwinding an interrupt
        still = refs
    for ref in still:
        with contextlib.suppress(Exception):  # already finished or gone
            ray.cancel(ref, force=True)


def _write_files(images: list[dict[str, Any]], files: list[dict[str, bytes | None]], folder: Path
                 ) -> list[dict[str, Any]]:
    """The node's image and latents bytes into this machine's image folder (temp name, rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for image, blobs in zip(images, files):
        image = dict(image)
        for key in ("path", "latents_path"):
            data = blobs.get(key)
            if image.get(key) is None or data is None:
                image[key] = None
                continue
            target = folder / Path(image[key]).name
            write_bytes_atomic(target, data)
            image[key] = str(target)
        out.append(image)
    return out


# -- node side ---------------------------------------------------------------------------------
def run_on_node(spec_json: str, timeout_s: float | None, cold_compile: bool, argv: list[str] | None,
                fault: str | None = None) -> dict[str, Any]:
    """The Ray task: run the worker in a scratch folder of this node, return its outcome and the
    bytes of its files. ``fault`` (test-only) makes Ray itself fail: ``ray-exit`` kills this Ray
    worker process, ``ray-lost`` raises a Ray ObjectLostError as if an object the task needed were lost."""
    started, started_at = time.time(), now_iso()
    if fault == "ray-exit":
        os._exit(1)
    if fault == "ray-lost":
        import ray

        raise ray.exceptions.ObjectLostError("0" * 56, None, "(simulated by diffquant's test fault ray-lost)")
    workdir = Path(tempfile.mkdtemp(prefix="diffquant-ray-run-"))
    try:
        spec = RunSpec.from_json(spec_json)
        spec = replace(spec, result_path=str(workdir / "result.json"), image_dir=str(workdir / "images"))
        outcome = run_worker(spec, workdir, timeout_s=timeout_s, argv=argv,
                             extra_env=compile_cache_env(workdir) if cold_compile else {})
        files = [{key: Path(im[key]).read_bytes() if outcome.status == "ok" and im.get(key) else None
                  for key in ("path", "latents_path")} for im in outcome.images]
        return {"outcome": outcome, "files": files, "started": started, "started_at": started_at,
                "node_id": _node_id(), "hostname": socket.gethostname()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _node_id() -> str | None:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001 - informational only
        return None
