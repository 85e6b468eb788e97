"""Every seed recipe on ``zoo:flux-dev-slice`` (FLUX.1-dev's exact layer widths, 1 double + 2
single blocks, ~0.95B parameters) on this machine's CPU, each in its own worker process.

Prints, per recipe, memory and latency as ratios to bf16 measured in the same sweep, then the
harness's overhead: the sweep's wall time against the sum of the work the workers measured.

    python benchmarks/bench_recipes_cpu.py                       # 1 prompt, 2 steps, 256x256
    python benchmarks/bench_recipes_cpu.py --steps 4 --repeats 3 --db out/cpu.db --force
    python benchmarks/bench_recipes_cpu.py --processes 3 --repeats 3 --force   # docs' record (issue 10)

Not a test: it takes a while (tens of minutes on 2 cores). Results land in a results database
(``diffquant results --db ...`` shows them again) and, as ``diffquant results --format json`` plus
the commit, versions, machine and the host's load average sampled during the sweep, in
``docs/data/recipes_cpu_flux_dev_slice.json`` (``--data``), from which
``python scripts/render_docs.py`` renders the table in docs/benchmarks.md. Run it alone on an
idle machine: the file records ``host_load.contended`` when other processes wanted CPU beyond what
the worker's own threads leave free (``diffquant.bench.phases.contention_counters``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from diffquant.arguments import parse_width_height
from diffquant.bench import SweepOptions, resolve_settings, run_sweep
from diffquant.bench.phases import contention_counters
from diffquant.commands.bench import SweepDisplay, default_quant_cache
from diffquant.recipes import SEED_RECIPES
from diffquant.store import RunRow

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Self

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "docs" / "data" / "recipes_cpu_flux_dev_slice.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="zoo:flux-dev-slice")
    parser.add_argument("--recipes", default=",".join(SEED_RECIPES), help="comma-separated (default: the seed's list)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--prompts", type=int, default=1, help="how many of the seed's prompts (1-3)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--processes", type=int, default=1,
                        help="fresh worker processes per recipe, in rounds (diffquant bench --processes); 3 or more "
                             "for ratios meant to be compared across sweeps")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--db", type=Path, default=Path("out") / "bench_recipes_cpu" / "results.db")
    parser.add_argument("--force", action="store_true", help="re-run recipes already in the database")
    parser.add_argument("--quant-cache", action="store_true",
                        help="load from diffquant's quantized-weights cache (a warm second run); default: "
                             "no cache, so every recipe quantizes on load as a user's first run does")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="where the sweep's JSON goes (default: docs/data/recipes_cpu_flux_dev_slice.json)")
    parser.add_argument("--no-data", action="store_true", help="write no JSON (a trial run)")
    parser.add_argument("--report-only", action="store_true",
                        help="print the report of the runs already in --db (sweep wall time from their timestamps)")
    return parser.parse_args(argv)


def render_docs() -> ModuleType:
    """scripts/render_docs.py, which owns the table's columns (one formatter for docs and console)."""
    spec = importlib.util.spec_from_file_location("render_docs", REPO / "scripts" / "render_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class LoadSampler:
    """The host's 1-minute load average every ``interval_s`` while the sweep runs (a sleeping
    thread: it costs the measured workers nothing)."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s, self.samples = interval_s, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> Self:
        self.started = time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])
        self.finished = time.time()

    def summary(self) -> dict[str, Any]:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return {"loadavg_1m_min": round(min(self.samples), 2), "loadavg_1m_max": round(max(self.samples), 2),
                "loadavg_1m_mean": round(sum(self.samples) / len(self.samples), 2), "samples": len(self.samples),
                "interval_s": self.interval_s, "cpu_count": cores,
                # the bench's one worker runs as many torch threads as cores: the same rule as each run's flag
                "contended": bool(contention_counters(max(self.samples), cores, cores)["host.contended"]),
                "started": _utc(self.started), "finished": _utc(self.finished)}


def _utc(stamp: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(stamp, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def export(db: Path, rows: list[RunRow], argv: list[str], host_load: dict[str, Any] | None) -> dict[str, Any]:
    """``diffquant results --format json`` for this sweep's runs, in plan order, plus where and how
    they were measured. Keys the export adds later (quality, new counters) pass through."""
    import contextlib
    import io
    import tempfile

    from diffquant.bench.sweep import environment_summary
    from diffquant.cli import main as diffquant

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "runs.json"
        sweeps = sorted({r.sweep_id for r in rows})
        runs: list[dict[str, Any]] = []
        for sid in sweeps:
            with contextlib.redirect_stdout(io.StringIO()):  # its "Wrote N runs" line
                code = diffquant(["results", "--db", str(db), "--sweep", sid, "--format", "json", "-o", str(out)])
            if code != 0:
                raise SystemExit(f"`diffquant results --db {db} --sweep {sid} --format json` failed")
            data = json.loads(out.read_text(encoding="utf-8"))
            runs.extend(data["runs"])
    by_id = {r["id"]: r for r in runs}
    data["runs"] = [by_id[r.id] for r in rows if r.id in by_id]
    env = next((r.env for r in rows if r.ok and r.env), rows[0].env if rows else {})
    data.setdefault("provenance", "written by `python benchmarks/bench_recipes_cpu.py " + " ".join(argv) + "`")
    data.setdefault("commit", env.get("git_commit"))
    data.setdefault("commit_dirty", env.get("git_dirty"))
    data.setdefault("versions", env.get("packages"))
    data.setdefault("machine", environment_summary(env) if env else None)
    data.setdefault("host_load", host_load)
    return data


def print_report(data: dict[str, Any], rows: list[RunRow], sweep_wall_s: float) -> None:
    docs = render_docs()
    block = docs.Block(Path("console"), "console", {"source": "-"}, 0, 0)
    print()
    print("\n".join(docs.markdown(*docs.view_cpu_recipes(data, block))))
    load = data.get("host_load") or {}
    if load:
        print(f"\nHost load average (1 min) during the sweep: {load['loadavg_1m_min']}-{load['loadavg_1m_max']} "
              f"on {load['cpu_count']} cores" + (" - CONTENDED: re-run on an idle machine" if load["contended"] else ""))
    ran = [r for r in rows if "run.wall_s" in r.metrics]

    def total(name: str) -> float:  # over every worker process (bench --processes: <name>.all_processes)
        return sum(r.metrics.get(f"{name}.all_processes", r.metrics.get(name)) or 0 for r in ran)

    work = total("load.wall_s") + total("gen.wall_s")
    lifetimes, imports, inside = total("run.wall_s"), total("worker.import_s"), total("worker.wall_s")
    workers = sum(int(r.metrics.get("run.processes") or 1) for r in ran)
    print(f"\nHarness overhead ({workers} workers started, {len(rows) - len(ran)} recipes refused before "
          "starting one):")
    print(f"- sweep wall time: {sweep_wall_s:.1f} s")
    print(f"- measured work (load + all calls, summed over workers): {work:.1f} s")
    print(f"- overhead: {sweep_wall_s - work:.1f} s ({(sweep_wall_s - work) / max(sweep_wall_s, 1e-9):.1%} of "
          f"the sweep), of which: interpreter start-up and exit {lifetimes - inside:.1f} s, "
          f"torch/diffusers imports in the workers {imports:.1f} s, the rest (measuring, image saving, "
          f"environment capture, DB writes, planning) {sweep_wall_s - work - (lifetimes - inside) - imports:.1f} s")


def stored_rows(options: SweepOptions) -> tuple[list[RunRow], float]:
    """The sweep's runs as stored, in plan order, and the span of their timestamps."""
    import datetime as dt

    from diffquant.bench.sweep import plan_sweep
    from diffquant.store import ResultsDB

    with ResultsDB(options.db_path) as db:
        rows = [p.existing for p in plan_sweep(options, db) if p.existing is not None]
    stamps = [dt.datetime.fromisoformat(t.replace("Z", "+00:00")) for r in rows
              for t in (r.started_at, r.finished_at)]
    return rows, (max(stamps) - min(stamps)).total_seconds() if stamps else 0.0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from diffquant.bench.sweep import SEED_PROMPTS

    width, height = parse_width_height(args.size) if args.size else (None, None)
    settings = resolve_settings(args.model, prompts=list(SEED_PROMPTS[: max(1, min(args.prompts, 3))]), seeds=[0],
                                steps=args.steps, width=width, height=height, device="cpu", repeats=args.repeats,
                                processes=args.processes)
    from diffquant.commands.bench import split_recipes

    options = SweepOptions(model=args.model, recipes=split_recipes(args.recipes), settings=settings,
                           db_path=args.db, timeout_s=args.timeout, force=args.force,
                           quant_cache_dir=default_quant_cache() if args.quant_cache else None)
    host_load = None
    if args.report_only:
        rows, wall = stored_rows(options)
    else:
        started = time.monotonic()
        with LoadSampler() as sampler, SweepDisplay() as display:
            report = run_sweep(options, on_event=display.on_event)
        wall = time.monotonic() - started if report.ran else report.wall_s
        rows = report.ordered_rows()
        host_load = sampler.summary()
    env = next((r.env for r in rows if r.ok), rows[0].env)
    from diffquant.bench.sweep import environment_summary

    print(f"\n{args.model} · cpu · {settings.steps} steps · {settings.width}x{settings.height} · "
          f"{len(settings.prompts)} prompt(s) × {len(settings.seeds)} seed(s) · {settings.repeats} steady calls"
          + (f" in each of {settings.processes} processes per recipe" if settings.processes > 1 else ""))
    print(f"Machine: {environment_summary(env)}")
    data = export(args.db, rows, list(argv if argv is not None else sys.argv[1:]), host_load)
    print_report(data, rows, wall)
    if not args.no_data and not args.report_only:
        from diffquant.store import write_atomic

        write_atomic(args.data, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        print(f"\nWrote {args.data}; `python scripts/render_docs.py` renders it into docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
