"""``diffquant bench``: run a sweep of recipes over one model, each in its own worker process,
with a live progress display, then print the seed's table and write the report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffquant.arguments import (
    argtype,
    parse_count,
    parse_device,
    parse_guidance,
    parse_processes,
    parse_seeds,
    parse_steps,
    parse_timeout,
    parse_width_height,
)

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Self

DEFAULT_MODEL = "zoo:shapes"
DEFAULT_DB = Path("diffquant-results") / "results.db"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench", help="benchmark recipes on a model, each in a fresh process, into a results database",
        description="Run each recipe in its own worker process (a crash, an out-of-memory kill or a timeout "
                    "becomes an error row and the sweep goes on), measure memory per phase, latencies, "
                    "weight bytes and the environment, save every image (PNG + latents), and record it "
                    "all in a SQLite database. Finished runs are skipped when the sweep is run again.")
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                        help=f"Hub id, local pipeline folder or zoo:NAME (default: {DEFAULT_MODEL})")
    parser.add_argument("--recipes", default=None,
                        help="comma-separated recipes or recipe .toml files (default: the seed article's list; "
                             "`diffquant recipes` shows the syntax). Commas inside (...) are kept.")
    parser.add_argument("--reference", default="bf16",
                        help="baseline recipe: run first, uncompiled; ratios and quality are against it "
                             "(default: bf16)")
    parser.add_argument("--prompts", type=Path, default=None,
                        help="text file, one prompt per line (blank lines and lines starting with # skipped)")
    parser.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable)")
    parser.add_argument("--seeds", type=argtype(parse_seeds), default="0", help="comma-separated seeds (default: 0)")
    parser.add_argument("--steps", type=argtype(parse_steps), default=None,
                        help="denoising steps (default: the model's)")
    parser.add_argument("--size", type=argtype(parse_width_height), default=None,
                        help="WIDTHxHEIGHT, e.g. 1024x1024, or one number for a square (default: the model's)")
    parser.add_argument("--guidance", type=argtype(parse_guidance), default=None,
                        help="guidance scale (default: the model's)")
    parser.add_argument("--device", type=argtype(parse_device), default=None,
                        help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--repeats", type=argtype(parse_count), default=5,
                        help="at least this many steady (timed) calls after the first call; their p50, IQR "
                             "and the bootstrap CI of the ratio to the reference come from them (default: 5)")
    parser.add_argument("--min-time", type=float, default=0.0,
                        help="and go on with steady calls until they have taken this many seconds "
                             "(time-based; default 0: count-based, --repeats calls)")
    parser.add_argument("--processes", type=argtype(parse_processes), default=1,
                        help="measure each recipe in this many fresh worker processes, in rounds (reference, A, B, "
                             "... then again; Ray may run them at once), pooling their steady calls; the latency "
                             "ratio's CI then resamples the processes too, so it also reflects how much a fresh "
                             "worker's speed differs, which one process cannot show. Memory, compile time and images "
                             "come from the first process (default: 1)")
    parser.add_argument("--warmup", type=argtype(parse_count), default=0,
                        help="extra untimed calls after the first one, e.g. for CUDA graphs (default: 0)")
    parser.add_argument("--timeout", type=argtype(parse_timeout), default=3600.0,
                        help="seconds before a run's worker is killed and recorded as timed out (default: 3600)")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"results database (default: {DEFAULT_DB})")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder for images and latents (default: 'images' beside the database)")
    parser.add_argument("--quant-cache", type=Path, default=None,
                        help="folder for quantized weights reused across runs (default: $DIFFQUANT_CACHE/quant)")
    parser.add_argument("--no-quant-cache", action="store_true", help="quantize from scratch in every run")
    parser.add_argument("--warm-compile-cache", action="store_true",
                        help="let compiled runs share torch inductor's on-disk cache (default: each compiled run "
                             "starts cold, so compile time is what a first run costs)")
    parser.add_argument("--force", action="store_true", help="re-run recipes already in the database")
    parser.add_argument("--retry-errors", action="store_true", help="re-run recipes whose stored run failed")
    parser.add_argument("--executor", default="local",
                        help="where runs execute: local (default; one at a time here) or ray[:ADDRESS] (each run a "
                             "Ray task on a cluster, one GPU per run on CUDA; docs/scale-out.md)")
    parser.add_argument("--cpus-per-run", type=float, default=None,
                        help="Ray: CPUs each run asks for (default: a whole node on CPU, a node's CPUs per GPU on CUDA)")
    parser.add_argument("--no-report", action="store_true", help="skip quality scoring, report.html and grid.png")
    parser.add_argument("--format", choices=("table", "md", "csv", "json"), default="table",
                        help="how to print the final results (default: table)")
    parser.add_argument("--budget", default=None, metavar="BYTES",
                        help="memory budget, e.g. 16GB or 16GiB: plan first, skip recipes predicted not to fit "
                             "(an error row says why) and run the reference with the lightest offload that fits")
    parser.set_defaults(func=run)
    return parser


def split_recipes(text: str) -> list[str]:
    """Split on commas outside parentheses: 'a,b+compile(fullgraph,mode=x)' -> 2 recipes."""
    items, depth, current = [], 0, []
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    items.append("".join(current).strip())
    return [i for i in items if i]


def read_prompts(path: Path) -> list[str]:
    from diffquant.errors import DiffquantError

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DiffquantError(f"Cannot read prompts file {str(path)!r}: {exc.strerror}.") from exc
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise DiffquantError(f"No prompts in {str(path)!r}.", hint="one prompt per line")
    return prompts


def default_quant_cache() -> Path:
    from diffquant.zoo import cache_root

    return cache_root().parent / "quant"


def run(args: argparse.Namespace) -> int:
    from diffquant.arguments import check_size_for_model
    from diffquant.bench import SweepOptions, resolve_settings, run_sweep
    from diffquant.components import resolve_model
    from diffquant.recipes import SEED_RECIPES

    width, height = args.size or (None, None)
    prompts = list(args.prompt or []) + (read_prompts(args.prompts) if args.prompts else [])
    recipes = split_recipes(args.recipes) if args.recipes else list(SEED_RECIPES)
    check_size_for_model(resolve_model(args.model), width, height)
    if args.processes > 1 and args.repeats == 0:
        from diffquant.errors import DiffquantError

        raise DiffquantError(f"--processes {args.processes} pools the steady calls of every process, but --repeats 0 "
                             "asks for none: the extra processes would measure nothing.",
                             hint="give --repeats 3 (or more) with --processes, or drop --processes")
    settings = resolve_settings(args.model, prompts=prompts or None, seeds=args.seeds,
                                steps=args.steps, height=height, width=width, guidance_scale=args.guidance,
                                device=args.device, repeats=args.repeats, warmup=args.warmup,
                                processes=args.processes)
    if args.min_time > 0:
        import dataclasses

        settings = dataclasses.replace(settings, min_time_s=float(args.min_time))
    options = SweepOptions(
        model=args.model, recipes=recipes, settings=settings, db_path=args.db, image_root=args.images,
        reference=args.reference, timeout_s=args.timeout, force=args.force, retry_errors=args.retry_errors,
        warm_compile_cache=args.warm_compile_cache, executor=args.executor, cpus_per_run=args.cpus_per_run,
        quant_cache_dir=None if args.no_quant_cache else (args.quant_cache or default_quant_cache()),
        budget_bytes=_budget(args.budget))
    from diffquant.commands.results import print_results

    with SweepDisplay() as display:
        report = run_sweep(options, on_event=display.on_event)
    rows = report.ordered_rows()
    print_results(report.db_path, rows, args.format, report.reference, wall_s=report.wall_s)
    for item in report.planned:
        if item.note:  # e.g. the reference runs with offload (--budget); on stderr beside json/csv output
            print(f"note: {item.note}", file=sys.stdout if args.format == "table" else sys.stderr)
    if not args.no_report:
        write_reports(report.db_path, report.reference)
    if report.broken:  # exit 1: a script or CI job must not read a failed sweep as a good one
        names = ", ".join(f"{r.recipe} ({r.metrics.get('run.outcome', r.status)})" for r in report.broken)
        print(f"{len(report.broken)} of {len(rows)} runs failed: {names}; exit status 1", file=sys.stderr)
    return report.exit_status


def _budget(text: str | None) -> int | None:
    from diffquant.plan import parse_budget

    return parse_budget(text) if text else None


def write_reports(db_path: Path, reference: str) -> None:
    """Quality scores, report.html and grid.png beside the database (modules of the quality and
    report packages; skipped with a note where they are not installed)."""
    import importlib

    from rich.console import Console

    console = Console(stderr=True)
    try:
        quality = importlib.import_module("diffquant.quality")
        report = importlib.import_module("diffquant.report")
    except ImportError as exc:
        console.print(f"[yellow]report skipped:[/] {exc}")
        return
    missing = [n for mod, n in ((quality, "score_database"), (report, "write_report"), (report, "write_grid"))
               if not hasattr(mod, n)]
    if missing:
        console.print(f"[yellow]report skipped:[/] not available yet: {', '.join(missing)}")
        return
    html, grid = db_path.parent / "report.html", db_path.parent / "grid.png"
    try:
        quality.score_database(db_path, reference=reference)
        report.write_report(db_path, html, reference=reference)
        report.write_grid(db_path, grid, reference=reference)
    except ModuleNotFoundError as exc:  # a part of quality/report not installed or not built yet
        if not (exc.name or "").startswith("diffquant."):
            raise
        console.print(f"[yellow]report skipped:[/] {exc}")
        return
    console.print(f"Report: {html}\nGrid:   {grid}")


class SweepDisplay:
    """Live progress on stderr (rich): the sweep as a whole, and the current run's phase, call and
    step. One line per finished run stays on screen."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(stderr=True)
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=self.console)
        self.sweep_task: Any = None
        self.run_task: Any = None
        # (planned index, process) -> its progress line (Ray runs several at once)
        self.run_tasks: dict[tuple[int, int], Any] = {}
        self.calls = 1
        self.steps = 1
        self.name = ""

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_event(self, kind: str, item: Any, data: dict[str, Any]) -> None:
        progress = self.progress
        if kind == "plan":
            planned = data["planned"]
            todo = sum(p.action == "run" for p in planned)
            self.console.print(f"[bold]Sweep[/] {len(planned)} recipes ({todo} to run, "
                               f"{len(planned) - todo} already in the database), reference {planned[0].name!r}")
            self.sweep_task = progress.add_task("sweep", total=len(planned))
        elif kind == "skip":
            self.console.print(f"  [dim]= {item.name}: already in the database ({data['row'].status}); "
                               "--force re-runs[/]")
            progress.advance(self.sweep_task)
        elif kind == "start":
            processes = int(data.get("processes") or 1)
            self.name = item.name + (f" [process {int(data.get('process') or 0) + 1}/{processes}]"
                                     if processes > 1 else "")
            self.run_task = progress.add_task(f"{self.name}: starting", total=None)
            self.run_tasks[(item.index, int(data.get("process") or 0))] = self.run_task
        elif kind == "worker":
            self._worker_event(data)
        elif kind == "process":  # one of a recipe's processes ended; its row comes with the last
            from rich.markup import escape

            self._end_task(item.index, data)
            p50 = data["outcome"].metrics.get("call.latency_s.p50")
            self.console.print(f"  [dim]· {escape(item.name)}: process {data['process'] + 1}/{data['processes']} done"
                               + (f", p50 {p50:.3g} s[/]" if isinstance(p50, (int, float)) else "[/]"))
        elif kind == "finish":
            self._end_task(item.index, data)
            progress.advance(self.sweep_task)
            self.console.print("  " + finish_line(data["row"]))

    def _end_task(self, index: int, data: dict[str, Any]) -> None:
        task = self.run_tasks.pop((index, int(data.get("process") or 0)), self.run_task)
        if task is not None:
            self.progress.remove_task(task)
        if task == self.run_task:
            self.run_task = None

    def _worker_event(self, event: dict[str, Any]) -> None:
        if self.run_task is None:
            return
        what = event.get("event")
        if what == "phase":
            self.progress.update(self.run_task, description=f"{self.name}: {event.get('phase')}")
        elif what == "call":
            self.calls = int(event.get("total") or 1)
            index = int(event.get("index") or 1)
            self.progress.update(self.run_task, description=f"{self.name}: call {index}/{self.calls} "
                                 f"({event.get('kind')})", total=self.calls * self.steps,
                                 completed=(index - 1) * self.steps)
            self._call = index
        elif what == "step":
            self.steps = int(event.get("steps") or 1)
            index = getattr(self, "_call", 1)
            self.progress.update(self.run_task, total=self.calls * self.steps,
                                 completed=(index - 1) * self.steps + int(event.get("step") or 0))


def finish_line(row: Any) -> str:
    from rich.markup import escape

    from diffquant.figures import fmt_mib, fmt_s
    from diffquant.store.summary import first_line

    if not row.ok:
        return f"[red]x {escape(row.recipe)}[/]: {escape(first_line(row.error or ''))}"
    m = row.metrics
    on_cuda = str(row.settings.get("device", "cpu")).startswith("cuda")
    model_peak = None if on_cuda else m.get("gen.model_peak_rss_mib")
    peak = m.get("gen.cuda_max_reserved_mib") if on_cuda else model_peak or m.get("gen.peak_rss_mib")
    weights = m.get("weights.total_bytes")
    flag = " · [yellow]contended[/]" if m.get("host.contended") else ""
    processes = int(m.get("run.processes") or 1)
    over = f" over {processes} processes" if processes > 1 else ""
    return (f"[green]ok {escape(row.recipe)}[/]: load {fmt_s(m.get('load.wall_s'))} · "
            f"call p50 {fmt_s(m.get('call.latency_s.p50'))}{over} · {'model peak' if model_peak else 'peak'} "
            f"{fmt_mib(peak)} · weights {fmt_mib(weights / 1048576 if weights else None)}{flag}")
