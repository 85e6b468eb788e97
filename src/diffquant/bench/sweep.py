"""A sweep: one model, many recipes, the same settings; each recipe in its own worker process,
each finished run (or failure) written to the results database as soon as it ends.

- The reference recipe (default ``bf16``) runs first and uncompiled; ratios are taken against it.
- A recipe that does not parse, or that cannot run on this device (``why_not_here``), becomes an
  error row with the reason, without starting a worker.
- A run already in the database (same run key) is skipped: ``force`` re-runs everything,
  ``retry_errors`` re-runs failed ones. A re-run replaces the old row in the same transaction.
- A run's row and its image rows are written in one transaction after the worker has exited (the
  worker wrote the image files atomically before), so an interrupted sweep leaves only complete
  runs behind and resumes where it stopped.
- With ``settings.processes`` = N > 1 each recipe runs in N workers, in rounds (reference, A, B,
  ..., then again), and its row is written when its last process ends (``bench/processes.py``).
  The rows therefore come in the last round: an interrupted sweep keeps only the recipes finished
  by then, and a resumed one runs the others' N processes again (without the reference between
  them, if the reference was recorded). Ray, which takes jobs ahead, may run a recipe's processes
  at once on different nodes rather than in rounds.
- Where the workers run is the executor's business (``executors.py``): here, one at a time (the
  default), or as Ray tasks on a cluster (``executor_ray.py``). Either way only the sweep writes
  the database and keeps image folders.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from diffquant.bench.executors import make_executor
from diffquant.bench.jobs import Executor, Job, PlannedRun, now_iso
from diffquant.bench.runner import WorkerOutcome
from diffquant.bench.spec import BenchSettings, RunSpec, run_key, slug, sweep_id
from diffquant.errors import DiffquantError
from diffquant.store import ImageRow, ResultsDB, RunRow

# The seed article's three prompts: the default when neither the user nor the model names any.
SEED_PROMPTS: tuple[str, ...] = (
    ("Baroque style, a lavish palace interior with ornate gilded ceilings, intricate tapestries, and dramatic "
     "lighting over a grand staircase."),
    ("Futurist style, a dynamic spaceport with sleek silver starships docked at angular platforms, surrounded by "
     "distant planets and glowing energy lines."),
    ("Noir style, a shadowy alleyway with flickering street lamps and a solitary trench-coated figure, framed by "
     "rain-soaked cobblestones and darkened storefronts."),
)

# run.outcome of a run refused before starting because this machine cannot run it, or because the
# plan predicts it over the user's --budget: not a failure.
REFUSED = frozenset({"unavailable", "over-budget"})

SweepEventHandler = Callable[[str, "PlannedRun", dict[str, Any]], None]


@dataclass
class SweepOptions:
    model: str
    recipes: Sequence[str]
    settings: BenchSettings
    db_path: Path
    image_root: Path | None = None  # default: an "images" folder beside the database
    reference: str = "bf16"
    timeout_s: float | None = 3600.0
    force: bool = False
    retry_errors: bool = False
    quant_cache_dir: Path | None = None
    sample_interval_s: float = 0.02
    save_images: bool = True
    warm_compile_cache: bool = False  # False: each compiled run gets fresh inductor/triton caches (cold compile)
    faults: Mapping[str, str] = field(default_factory=dict)  # test-only: recipe -> "fault[@phase]"
    worker_argv: Sequence[str] | None = None  # test-only: replaces `python -m diffquant.bench.worker`
    executor: str | Executor = "local"  # "local" | "ray" | "ray:ADDRESS" (see bench/executors.py)
    cpus_per_run: float | None = None  # Ray only: CPUs a run asks for (default: see executor_ray.py)
    budget_bytes: int | None = None  # plan first: refuse recipes predicted over it, offload the reference


@dataclass
class SweepReport:
    sweep_id: str
    model: str
    reference: str
    db_path: Path
    planned: list[PlannedRun]
    rows: dict[int, RunRow]  # planned index -> the row now in the database (new or kept)
    wall_s: float = 0.0

    @property
    def ran(self) -> list[PlannedRun]:
        return [p for p in self.planned if p.action == "run"]

    @property
    def skipped(self) -> list[PlannedRun]:
        return [p for p in self.planned if p.action == "skip"]

    @property
    def failed(self) -> list[RunRow]:
        return [r for r in self.rows.values() if not r.ok]

    def ordered_rows(self) -> list[RunRow]:
        return [self.rows[p.index] for p in self.planned if p.index in self.rows]

    @property
    def broken(self) -> list[RunRow]:
        """Runs that crashed, timed out, failed or did not parse (kept rows of earlier sweeps too);
        not those refused before starting because this machine cannot run them."""
        return [r for r in self.ordered_rows() if not r.ok and r.metrics.get("run.outcome") not in REFUSED]

    @property
    def exit_status(self) -> int:
        """0 when every run succeeded or was refused as unable to run here, else 1."""
        return 1 if self.broken else 0


def default_prompts(model: str) -> tuple[str, ...]:
    """Prompts a model folder suggests (``diffquant.json`` "prompts"), else the seed's three."""
    from diffquant.components import resolve_model
    from diffquant.zoo.meta import read_model_meta

    meta = read_model_meta(resolve_model(model))
    return meta.prompts if meta is not None and meta.prompts else SEED_PROMPTS


def resolve_settings(model: str, *, prompts: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                     steps: int | None = None, height: int | None = None, width: int | None = None,
                     guidance_scale: float | None = None, device: str | None = None, repeats: int = 2,
                     warmup: int = 0, processes: int = 1) -> BenchSettings:
    """Fill what the user left out from the model's defaults and this machine."""
    from diffquant.pipeline import default_device, default_settings

    defaults = default_settings(model)
    return BenchSettings(
        prompts=tuple(prompts) if prompts else default_prompts(model),
        seeds=tuple(int(s) for s in seeds) if seeds else (0,),
        steps=steps if steps is not None else defaults.steps,
        height=height if height is not None else defaults.height,
        width=width if width is not None else defaults.width,
        guidance_scale=guidance_scale if guidance_scale is not None else defaults.guidance_scale,
        device=device or default_device(), repeats=max(int(repeats), 0), warmup=max(int(warmup), 0),
        processes=max(int(processes), 1), pipeline_kwargs=dict(defaults.pipeline_kwargs))


def _why_not_here(recipe: Any, device: str) -> str | None:
    from diffquant.backends import why_not_here

    return why_not_here(recipe, "cuda" if device.startswith("cuda") else device)


def plan_sweep(options: SweepOptions, db: ResultsDB) -> list[PlannedRun]:
    """Reference first, duplicates dropped, each recipe parsed (a ``.toml`` path is read, as
    ``generate --recipe`` does), checked and looked up in the DB."""
    from diffquant.recipes import load_recipe, parse_recipe

    reference = load_recipe(options.reference)
    fit = None
    if options.budget_bytes:
        from diffquant.plan.fit import fit_sweep

        fit = fit_sweep(options.model, reference.name, list(options.recipes), options.budget_bytes,
                        device=options.settings.device, height=options.settings.height,
                        width=options.settings.width)
        reference = parse_recipe(fit.reference)
    if reference.compile.enabled:
        raise DiffquantError(f"The reference recipe {reference.name!r} compiles; ratios need an uncompiled "
                             "baseline.", hint="give --reference without +compile (e.g. bf16)")
    texts = [reference.name] + [t.strip() for t in options.recipes if t.strip()]
    planned: list[PlannedRun] = []
    seen: set[str] = set()
    settings = options.settings
    for text in texts:
        problem = kind = recipe = None
        compiled = False
        try:
            recipe = load_recipe(text)
            name, recipe_hash, compiled = recipe.name, recipe.hash, recipe.compile.enabled
            reason = _why_not_here(recipe, settings.device)
            if reason:
                problem, kind = f"Recipe {name!r} cannot run on {settings.device}: {reason}", "unavailable"
            elif fit is not None and name in fit.refused:
                problem, kind = fit.refused[name], "over-budget"
        except DiffquantError as exc:
            name = text
            recipe_hash = "invalid-" + hashlib.sha256(text.encode()).hexdigest()[:8]
            problem, kind = str(exc), "invalid"
        if name in seen:
            continue
        seen.add(name)
        key = run_key(options.model, recipe_hash, settings)
        existing = db.run_by_key(key)
        action = "run"
        if existing is not None and not options.force and (existing.ok or not options.retry_errors):
            action = "skip"
        planned.append(PlannedRun(len(planned), text, name, recipe_hash, key, problem, kind, existing, action,
                                  compiled, note=fit.reference_note if fit and not planned else None,
                                  recipe=recipe))
    return planned


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A `kill` of the sweep unwinds like Ctrl-C: the worker is killed, nothing half-written stays."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_sweep(options: SweepOptions, on_event: SweepEventHandler | None = None) -> SweepReport:
    """Plan, then hand each planned recipe to the executor (isolated runs), recording every
    outcome as it ends. Only this function writes the database and keeps image folders."""
    from diffquant.bench.env import capture_env

    emit = on_event or (lambda kind, planned, data: None)
    started = time.monotonic()
    db_path = Path(options.db_path).expanduser().resolve()
    image_root = Path(options.image_root or db_path.parent / "images").expanduser().resolve()
    sid = sweep_id(options.model, options.settings)
    executor = make_executor(options.executor, device=options.settings.device, cpus_per_run=options.cpus_per_run)
    with ResultsDB(db_path) as db, _sigterm_as_interrupt():
        planned = plan_sweep(options, db)
        report = SweepReport(sid, options.model, planned[0].name, db_path, planned, {})
        emit("plan", planned[0], {"planned": planned})
        processes = options.settings.processes
        open_jobs: dict[tuple[int, int], Job] = {}
        # (job, outcome) of each finished process of a recipe whose row is not yet written
        finished: dict[int, list[tuple[Job, WorkerOutcome]]] = {}

        def jobs() -> Iterator[Job]:
            # Rows that need no worker are recorded while the executor pulls the next job: with
            # the local executor the database keeps plan order, as it did before executors.
            parent_env: dict[str, Any] | None = None
            for item in planned:
                if item.action == "skip":
                    assert item.existing is not None
                    report.rows[item.index] = item.existing
                    emit("skip", item, {"row": item.existing})
                    continue
                if item.problem:
                    emit("start", item, {})
                    parent_env = parent_env or capture_env()
                    row = _row(options, sid, item, "error", item.problem, {"run.outcome": item.outcome_kind},
                               parent_env, now_iso(), now_iso())
                    report.rows[item.index] = _record(db, row, [], item, image_root)
                    emit("finish", item, {"row": report.rows[item.index]})
                    continue
                yield _open(_job(options, item, image_root, emit))
            # --processes N: further rounds in plan order, so that each recipe's processes are spread
            # over the sweep; a recipe whose row is written (a process failed) gets no more. (An
            # executor that pulls ahead, Ray, may start one before an earlier failure is known: its
            # outcome is then discarded.)
            runnable = [item for item in planned if item.action == "run" and not item.problem]
            for process in range(1, processes):
                for item in runnable:
                    if item.index not in report.rows:
                        yield _open(_job(options, item, image_root, emit, process=process))

        def _open(job: Job) -> Job:
            open_jobs[(job.item.index, job.process)] = job
            return job

        def on_start(job: Job) -> None:
            job.started_at = now_iso()
            emit("start", job.item, {"process": job.process, "processes": processes})

        try:
            with contextlib.closing(executor.run(jobs(), on_start)) as outcomes:
                for job, outcome in outcomes:
                    open_jobs.pop((job.item.index, job.process), None)
                    index = job.item.index
                    if index in report.rows:  # a process of this recipe failed already (Ray ran ahead)
                        _discard(job)
                        continue
                    _check_recipe_hash(job.item, outcome)  # every process's, not only the first's
                    done = finished.setdefault(index, [])
                    done.append((job, outcome))
                    if outcome.status == "ok" and len(done) < processes:
                        emit("process", job.item, {"process": job.process, "processes": processes,
                                                   "outcome": outcome})
                        continue
                    first, merged = _merge(done, processes)
                    for other, _ in done:
                        if other is not first:
                            _discard(other)
                    report.rows[index] = _finish(options, db, sid, first, merged, image_root)
                    emit("finish", job.item, {"row": report.rows[index], "process": job.process})
        finally:  # interrupted: runs that were not recorded keep no files
            for job in [*open_jobs.values(), *(j for i, done in finished.items() if i not in report.rows
                                               for j, _ in done)]:
                _discard(job)
        report.wall_s = time.monotonic() - started
    return report


def _merge(done: list[tuple[Job, WorkerOutcome]], processes: int) -> tuple[Job, WorkerOutcome]:
    """The first process's job (its images, start time and work folder) and the recipe's one
    outcome: the single process's, or the processes' merged (bench/processes.py)."""
    done = sorted(done, key=lambda pair: pair[0].process)
    if processes == 1:
        return done[0]
    from diffquant.bench.processes import merge_outcomes

    failed = next(((job, outcome) for job, outcome in done if outcome.status != "ok"), None)
    if failed is not None:  # the failure alone, naming its process
        job, outcome = failed
        return done[0][0], replace(outcome, error=f"process {job.process + 1} of {processes}: "
                                                  f"{outcome.error or 'failed without a message'}")
    return done[0][0], merge_outcomes([outcome for _, outcome in done])


def _discard(job: Job) -> None:
    shutil.rmtree(job.workdir, ignore_errors=True)
    shutil.rmtree(job.spec.image_dir, ignore_errors=True)


def _job(options: SweepOptions, item: PlannedRun, image_root: Path, emit: SweepEventHandler,
         process: int = 0) -> Job:
    """The job of one worker process; the first of a recipe's processes saves its images."""
    workdir = Path(tempfile.mkdtemp(prefix="diffquant-run-"))
    attempt_dir = (image_root / slug(options.model) / f"{slug(item.name)}-{item.run_key[:8]}-{uuid.uuid4().hex[:6]}"
                   if process == 0 else workdir / "images")
    fault, _, phase = (options.faults.get(item.text) or options.faults.get(item.name) or "").partition("@")
    spec = RunSpec.build(options.model, item.recipe or item.name, options.settings, result_path=workdir / "result.json",
                         image_dir=attempt_dir, save_images=options.save_images and process == 0,
                         quant_cache_dir=str(options.quant_cache_dir) if options.quant_cache_dir else None,
                         sample_interval_s=options.sample_interval_s, fault=fault or None,
                         fault_phase=phase or "start")
    # Compile time as a first-time user sees it, unless the user asked for the shared cache.
    cold = item.compiled and not options.warm_compile_cache
    return Job(item, spec, workdir, options.timeout_s, cold, argv=options.worker_argv,
               on_event=lambda event: emit("worker", item, event), process=process)


def _finish(options: SweepOptions, db: ResultsDB, sid: str, job: Job, outcome: WorkerOutcome,
            image_root: Path) -> RunRow:
    from diffquant.bench.env import capture_env

    item = job.item
    recorded = False
    try:
        _check_recipe_hash(item, outcome)
        outcome.metrics["run.outcome"] = _outcome_kind(outcome)
        if item.note:
            outcome.metrics["run.note"] = item.note
        if item.compiled:
            outcome.metrics["compile.cache"] = "cold" if job.cold_compile else "shared"
        images = [ImageRow(0, 0, im["prompt"], int(im["prompt_index"]), int(im["seed"]), str(im["path"]),
                           im.get("latents_path")) for im in outcome.images] if outcome.status == "ok" else []
        row = _row(options, sid, item, outcome.status, outcome.error, outcome.metrics,
                   outcome.env or capture_env(), job.started_at or now_iso(), now_iso())
        row = _record(db, row, images, item, image_root)
        recorded = outcome.status == "ok"
        return row
    finally:
        shutil.rmtree(job.workdir, ignore_errors=True)
        if not recorded:  # a failed or interrupted run keeps no files
            shutil.rmtree(job.spec.image_dir, ignore_errors=True)


def _check_recipe_hash(item: PlannedRun, outcome: WorkerOutcome) -> None:
    """A run whose worker reports another recipe hash than the planned one measured some other
    recipe: its numbers must not be filed under this one, so it becomes a failed row. (A stand-in
    worker that reports no hash is not checked.)"""
    if outcome.status != "ok" or outcome.recipe_hash in (None, item.recipe_hash):
        return
    outcome.status = "error"
    outcome.error = (f"The worker ran recipe hash {outcome.recipe_hash}, not the planned {item.recipe_hash} "
                     f"({item.name}); its measurements are not recorded under this recipe.")
    outcome.metrics["run.outcome"] = "recipe-mismatch"


def _outcome_kind(outcome: WorkerOutcome) -> str:
    if outcome.metrics.get("run.outcome") in ("lost", "recipe-mismatch"):  # set before: kept
        return outcome.metrics["run.outcome"]
    if outcome.status == "ok":
        return "ok"
    if outcome.timed_out:
        return "timeout"
    if outcome.returncode is not None and outcome.returncode < 0:
        return "crashed"
    return "failed"


def _row(options: SweepOptions, sid: str, item: PlannedRun, status: str, error: str | None,
         metrics: dict[str, Any], env: dict[str, Any], started_at: str, finished_at: str) -> RunRow:
    settings = {**options.settings.to_dict(), "timeout_s": options.timeout_s,
                "quant_cache": options.quant_cache_dir is not None, "compiled": item.compiled}
    return RunRow(id=0, sweep_id=sid, model=options.model, recipe=item.name, recipe_hash=item.recipe_hash,
                  settings=settings, status=status, error=error, metrics=metrics, env=env,
                  started_at=started_at, finished_at=finished_at, run_key=item.run_key)


def _record(db: ResultsDB, row: RunRow, images: list[ImageRow], item: PlannedRun, image_root: Path) -> RunRow:
    """Write the row (replacing an older one with the same key), then drop the old run's files."""
    old_images = db.images(item.existing.id) if item.existing is not None else []
    stored = db.run(db.record_run(row, images))
    assert stored is not None
    new_paths = {im.path for im in images}
    for folder in {Path(im.path).parent for im in old_images if im.path not in new_paths}:
        if image_root in folder.parents:  # only ever delete inside our own image folder
            shutil.rmtree(folder, ignore_errors=True)
    return stored


def list_orphans(image_root: Path, db: ResultsDB) -> list[Path]:
    """Image folders no run refers to (left by runs killed before they were recorded)."""
    used = {str(Path(im.path).parent) for run in db.runs() for im in db.images(run.id)}
    if not image_root.is_dir():
        return []
    return [d for model_dir in image_root.iterdir() if model_dir.is_dir()
            for d in model_dir.iterdir() if d.is_dir() and str(d) not in used]


def environment_summary(env: Mapping[str, Any]) -> str:
    """One line naming the machine: CPU (cores) · RAM · GPU."""
    ram = env.get("ram_bytes")
    parts = [f"{env.get('cpu_model', '?')} ({env.get('cpu_affinity') or env.get('cpu_count')} cores)"]
    if ram:
        parts.append(f"{ram / 1024 ** 3:.0f} GiB RAM")
    parts.append(f"GPU {env['gpu']}" if env.get("gpu") else "no GPU")
    pk = env.get("packages") or {}
    parts.append(f"torch {pk.get('torch')}, diffusers {pk.get('diffusers')}")
    return " · ".join(parts)

