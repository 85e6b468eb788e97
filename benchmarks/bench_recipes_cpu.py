"""Every seed recipe on ``zoo:flux-dev-slice`` (FLUX.1-dev's exact layer widths, 1 double + 2
single blocks, ~0.95B parameters) on this machine's CPU, each in its own worker process.

Prints, per recipe, memory and latency as ratios to bf16 measured in the same sweep, then the
harness's overhead: the sweep's wall time against the sum of the work the workers measured.

    python benchmarks/bench_recipes_cpu.py                       # 1 prompt, 2 steps, 256x256
    python benchmarks/bench_recipes_cpu.py --steps 4 --repeats 3 --db out/cpu.db --force

Not a test: it takes a while (tens of minutes on 2 cores). Results land in a results database
(``diffquant results --db ...`` shows them again).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from diffquant.bench import SweepOptions, resolve_settings, run_sweep
from diffquant.commands.bench import SweepDisplay, default_quant_cache, parse_size
from diffquant.recipes import SEED_RECIPES
from diffquant.store import RunRow
from diffquant.store.summary import first_line, fmt_mib, fmt_s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="zoo:flux-dev-slice")
    parser.add_argument("--recipes", default=",".join(SEED_RECIPES), help="comma-separated (default: the seed's list)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--prompts", type=int, default=1, help="how many of the seed's prompts (1-3)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--db", type=Path, default=Path("out") / "bench_recipes_cpu" / "results.db")
    parser.add_argument("--force", action="store_true", help="re-run recipes already in the database")
    parser.add_argument("--report-only", action="store_true",
                        help="print the report of the runs already in --db (sweep wall time from their timestamps)")
    return parser.parse_args(argv)


def ratio(run: RunRow, ref: RunRow | None, key: str) -> str:
    mine, theirs = run.metrics.get(key), ref.metrics.get(key) if ref else None
    if not isinstance(mine, (int, float)) or not isinstance(theirs, (int, float)) or not theirs:
        return "-"
    return f"{mine / theirs:.2f}×"


def mib(run: RunRow, key: str) -> str:
    value = run.metrics.get(key)
    if key.endswith("_bytes") and isinstance(value, (int, float)):
        value = value / 2**20
    return fmt_mib(value if isinstance(value, (int, float)) else None)


def _load(m: dict) -> str:
    values = [v for v in (m.get("host.loadavg_1m.before_load"), m.get("host.loadavg_1m.end")) if v is not None]
    return "/".join(f"{v:.1f}" for v in values) or "-"


def print_report(rows: list[RunRow], sweep_wall_s: float) -> None:
    ref = next((r for r in rows if r.recipe == "bf16" and r.ok), None)
    print("\n| recipe | weights (×bf16) | after-load RSS | of it: anon / mapped weight files "
          "| peak RSS, generating (×bf16) | peak anon, generating | load peak RSS | call p50 (×bf16) | step p50 "
          "| first call | compile | load | host load before/after |")
    print("|" + "---|" * 13)
    for r in rows:
        if not r.ok:
            print(f"| {r.recipe} | error: {first_line(r.error or '', 110).replace('|', '/')} |" + " |" * 11)
            continue
        m = r.metrics
        print(f"| {r.recipe} | {mib(r, 'weights.total_bytes')} ({ratio(r, ref, 'weights.total_bytes')}) "
              f"| {mib(r, 'load.rss_mib')} | {mib(r, 'load.rss_anon_mib')} / {mib(r, 'load.rss_weight_files_mib')} "
              f"| {mib(r, 'gen.peak_rss_mib')} ({ratio(r, ref, 'gen.peak_rss_mib')}) "
              f"| {mib(r, 'gen.peak_rss_anon_mib')} | {mib(r, 'load.peak_rss_mib')} "
              f"| {fmt_s(m.get('call.latency_s.p50'))} ({ratio(r, ref, 'call.latency_s.p50')}) "
              f"| {fmt_s(m.get('step.latency_s.p50'))} | {fmt_s(m.get('first_call.latency_s'))} "
              f"| {fmt_s(m.get('compile.time_s'))} | {fmt_s(m.get('load.wall_s'))} | {_load(m)} |")
    ran = [r for r in rows if "run.wall_s" in r.metrics]
    work = sum((r.metrics.get("load.wall_s") or 0) + (r.metrics.get("gen.wall_s") or 0) for r in ran)
    lifetimes = sum(r.metrics.get("run.wall_s") or 0 for r in ran)
    imports = sum(r.metrics.get("worker.import_s") or 0 for r in ran)
    inside = sum(r.metrics.get("worker.wall_s") or 0 for r in ran)
    print(f"\nHarness overhead ({len(ran)} workers started, {len(rows) - len(ran)} recipes refused before "
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

    width, height = parse_size(args.size)
    settings = resolve_settings(args.model, prompts=list(SEED_PROMPTS[: max(1, min(args.prompts, 3))]), seeds=[0],
                                steps=args.steps, width=width, height=height, device="cpu", repeats=args.repeats)
    from diffquant.commands.bench import split_recipes

    options = SweepOptions(model=args.model, recipes=split_recipes(args.recipes), settings=settings,
                           db_path=args.db, timeout_s=args.timeout, force=args.force,
                           quant_cache_dir=default_quant_cache())
    if args.report_only:
        rows, wall = stored_rows(options)
    else:
        started = time.monotonic()
        with SweepDisplay() as display:
            report = run_sweep(options, on_event=display.on_event)
        wall = time.monotonic() - started if report.ran else report.wall_s
        rows = report.ordered_rows()
    env = next((r.env for r in rows if r.ok), rows[0].env)
    from diffquant.bench.sweep import environment_summary

    print(f"\n{args.model} · cpu · {settings.steps} steps · {settings.width}x{settings.height} · "
          f"{len(settings.prompts)} prompt(s) × {len(settings.seeds)} seed(s) · {settings.repeats} steady calls")
    print(f"Machine: {environment_summary(env)}")
    print_report(rows, wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
