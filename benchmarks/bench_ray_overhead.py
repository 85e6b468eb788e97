"""What the Ray executor costs: the same 4-recipe sweep on ``zoo:shapes`` through the local
executor and through a local Ray cluster on this machine, wall time side by side.

    python benchmarks/bench_ray_overhead.py                # measure, write docs/data/ray_overhead.json
    python benchmarks/bench_ray_overhead.py --rounds 3     # alternate local/Ray 3 times, keep every time
    python benchmarks/bench_ray_overhead.py --render       # the Markdown table for docs/scale-out.md

Both sweeps do the same work: the same recipes, settings and thread count (``OMP_NUM_THREADS`` =
``--threads`` for the local workers; Ray sets it to the CPUs a run gets, here ``--threads``), a
whole node per run (so Ray runs them one at a time, as the local executor does), no quantized-weight
cache. An untimed one-run sweep first warms the file cache. The Ray cluster is started before its
sweep and its start-up is reported on its own (``ray.start_s``): a user with a running cluster
does not pay it. Overhead = (Ray sweep - local sweep) / local sweep.

Run it on an idle machine (load average well under the core count): the figures of a contended
machine mean nothing. Not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from diffquant.bench import SweepOptions, resolve_settings, run_sweep

DEFAULT_RECIPES = "torchao-int8wo,quanto-int8,gguf-q8_0"  # + the bf16 reference: 4 runs
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "data" / "ray_overhead.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="zoo:shapes")
    parser.add_argument("--recipes", default=DEFAULT_RECIPES, help="besides the bf16 reference (comma-separated)")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="local/Ray pairs, alternating (default: 1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads per run, both executors; Ray CPUs per run (default: all)")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--render", action="store_true", help="print the Markdown table of --out and stop")
    return parser.parse_args(argv)


def sweep(options: SweepOptions) -> dict[str, Any]:
    started = time.monotonic()
    report = run_sweep(options)
    wall = time.monotonic() - started
    rows = report.ordered_rows()
    bad = [f"{r.recipe}: {r.error}" for r in rows if not r.ok]
    if bad:
        raise SystemExit("a run failed, the comparison would be unfair:\n" + "\n".join(bad))
    return {"wall_s": wall, "runs": len(rows),
            "run_wall_s": {r.recipe: r.metrics.get("run.wall_s") for r in rows},
            "queue_s": {r.recipe: r.metrics.get("ray.queue_s") for r in rows if "ray.queue_s" in r.metrics}}


def loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from diffquant.bench.env import capture_env, git_commit
    from diffquant.commands.bench import split_recipes

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the local workers inherit it; Ray sets the same
    settings = resolve_settings(args.model, steps=args.steps, device="cpu", repeats=args.repeats)
    recipes = split_recipes(args.recipes)
    work = Path(tempfile.mkdtemp(prefix="bench-ray-overhead-"))

    def options(name: str, executor: str) -> SweepOptions:
        return SweepOptions(model=args.model, recipes=recipes, settings=settings, db_path=work / name / "r.db",
                            timeout_s=args.timeout, executor=executor, force=True,
                            cpus_per_run=args.threads if executor == "ray" else None)

    warm = SweepOptions(model=args.model, recipes=[], settings=settings, db_path=work / "warm" / "r.db",
                        timeout_s=args.timeout)
    run_sweep(warm)
    record: dict[str, Any] = {"rounds": [], "load_before": loadavg()}
    t0 = time.monotonic()
    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    record["ray.start_s"] = time.monotonic() - t0
    try:
        for index in range(args.rounds):
            local = sweep(options(f"local{index}", "local"))
            remote = sweep(options(f"ray{index}", "ray"))
            record["rounds"].append({"local": local, "ray": remote})
            print(f"round {index + 1}: local {local['wall_s']:.1f} s · Ray {remote['wall_s']:.1f} s "
                  f"({remote['wall_s'] / local['wall_s'] - 1:+.1%})", file=sys.stderr)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    record["load_after"] = loadavg()
    local_s = statistics.median(r["local"]["wall_s"] for r in record["rounds"])
    ray_s = statistics.median(r["ray"]["wall_s"] for r in record["rounds"])
    env = capture_env()
    record.update({
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": args.model, "recipes": ["bf16", *recipes],
        "settings": settings.to_dict(), "threads": args.threads, "ray_version": ray.__version__,
        "local.sweep_s.median": local_s, "ray.sweep_s.median": ray_s,
        "ray.overhead.fraction": ray_s / local_s - 1,
        "ray.overhead_with_start.fraction": (ray_s + record["ray.start_s"]) / local_s - 1,
        "machine": {k: env.get(k) for k in ("cpu_model", "cpu_count", "ram_bytes", "packages")},
        **git_commit(),
    })
    return record


def render(record: dict[str, Any]) -> str:
    rounds, start_s = record["rounds"], record["ray.start_s"]
    local_s, ray_s = record["local.sweep_s.median"], record["ray.sweep_s.median"]
    head = (f"`{record['model']}`, {len(record['recipes'])} recipes ({', '.join(record['recipes'])}), "
            f"{record['settings']['steps']} steps, {record['threads']} threads per run, {len(rounds)} round(s); "
            f"{record['machine']['cpu_model']}, load {record['load_before']:.1f} before / "
            f"{record['load_after']:.1f} after; Ray {record['ray_version']}, {record['date'][:10]}.")
    lines = [head, "", "| executor | sweep wall time (median) | vs local |", "|---|---|---|",
             f"| local | {local_s:.1f} s | — |",
             f"| Ray (cluster already running) | {ray_s:.1f} s | {record['ray.overhead.fraction']:+.1%} |",
             (f"| Ray, counting the cluster's start ({start_s:.1f} s) | {ray_s + start_s:.1f} s "
              f"| {record['ray.overhead_with_start.fraction']:+.1%} |")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        print(render(json.loads(args.out.read_text(encoding="utf-8"))))
        return 0
    record = measure(args)
    from diffquant.atomic import write_text_atomic

    write_text_atomic(args.out, json.dumps(record, indent=2, default=str) + "\n")
    print(render(record))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
