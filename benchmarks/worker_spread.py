"""How much one recipe's latency ratio moves between fresh worker processes, against the CI that
one sweep prints (issue 10: "two sweeps of the same recipes on an idle machine agree within their
CIs"; bnb-int8 did not).

Each repetition is one ``diffquant bench MODEL --recipes REFERENCE,RECIPE`` in a fresh process with
its own database and no quantized-weights cache (a first run, as bench_recipes_cpu.py
measures). Per repetition it keeps both runs' steady-call latencies, the ratio of their p50s with its
bootstrap 95% CI (the table's own), the minor page faults per steady call (``call.minor_faults.p50``:
whether the allocator re-faults memory every call) and the host's load, plus the commit.

    python benchmarks/worker_spread.py [--recipe bnb-int8] [--repeats 4] [--out docs/data/worker_spread.json]

``render(data)`` gives the table docs/benchmarks.md shows (scripts/render_docs.py). Run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diffquant.atomic import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "data" / "worker_spread.json"
KEEP = ("call.latency_s.p50", "call.latency_s.samples", "call.minor_faults.p50", "first_call.latency_s",
        "host.contended", "host.loadavg_1m.max")


def one_sweep(model: str, reference: str, recipe: str, settings: Sequence[str], workdir: Path) -> dict[str, Any]:
    """One fresh bench of the reference and the recipe; the kept counters per recipe."""
    db = workdir / "results.db"
    subprocess.run([sys.executable, "-m", "diffquant.cli", "bench", model, "--recipes", f"{reference},{recipe}",
                    "--reference", reference, "--db", str(db), "--no-quant-cache", "--no-report",
                    "--images", str(workdir / "images"), *settings],
                   check=True, stdout=subprocess.DEVNULL)
    out = workdir / "runs.json"
    subprocess.run([sys.executable, "-m", "diffquant.cli", "results", "--db", str(db), "--format", "json",
                    "-o", str(out)], check=True, stdout=subprocess.DEVNULL)
    runs = json.loads(out.read_text(encoding="utf-8"))["runs"]
    return {r["recipe"]: {k: r["metrics"].get(k) for k in KEEP} for r in runs if r.get("status") == "ok"}


def ratio_with_ci(run: dict[str, Any], reference: dict[str, Any]) -> dict[str, float] | None:
    """The table's own latency ratio and CI (``store.summary.latency_ratio``) of the two runs' kept counters."""
    from diffquant.store.summary import latency_ratio

    est = latency_ratio(run, reference)
    return None if est is None else {"ratio": est.mean, "low": est.ci_low, "high": est.ci_high}


def _count(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"  # no getrusage (Windows): not measured


def render(data: Mapping[str, Any]) -> str:
    ref, recipe = data["reference"], data["recipe"]
    header = (f"| worker pair | {ref} call p50 s | {recipe} call p50 s | ×{ref} [95% CI] | "
              f"minor faults per call, {ref} / {recipe} | host load 1 min, max (contended?) |")
    lines = [header, "|---|---|---|---|---|---|"]
    for i, row in enumerate(data["rows"], 1):
        a, b, r = row[ref], row[recipe], row["ratio"]
        load = max(a["host.loadavg_1m.max"] or 0, b["host.loadavg_1m.max"] or 0)
        contended = "contended" if a.get("host.contended") or b.get("host.contended") else "idle"
        lines.append(f"| {i} | {a['call.latency_s.p50']:.2f} | {b['call.latency_s.p50']:.2f} | "
                     f"{r['ratio']:.2f}× [{r['low']:.2f}, {r['high']:.2f}] | "
                     f"{_count(a['call.minor_faults.p50'])} / {_count(b['call.minor_faults.p50'])} | {load:.2f} ({contended}) |")
    ratios = [row["ratio"] for row in data["rows"]]
    overlap = all(max(x["low"], y["low"]) <= min(x["high"], y["high"]) for x in ratios for y in ratios)
    lines += ["", (f"Ratios {min(r['ratio'] for r in ratios):.2f}–{max(r['ratio'] for r in ratios):.2f}× over "
                   f"{len(ratios)} fresh worker pairs; every pair of CIs overlaps: {'yes' if overlap else 'no'}.")]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from diffquant.bench.env import git_commit

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="zoo:flux-dev-slice")
    parser.add_argument("--reference", default="bf16")
    parser.add_argument("--recipe", default="bnb-int8")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    from diffquant.bench import SEED_PROMPTS

    # bench_recipes_cpu.py's settings: the seed's first prompt, 2 steps, 256x256, 5 steady calls
    settings = ["--device", "cpu", "--prompt", SEED_PROMPTS[0], "--steps", "2", "--size", "256x256", "--repeats", "5"]
    rows = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            got = one_sweep(args.model, args.reference, args.recipe, settings, Path(tmp))
        if args.reference not in got or args.recipe not in got:
            raise SystemExit(f"pair {i + 1}: a run failed (got {sorted(got)}); rerun its command without this "
                             "script to see the error: diffquant bench MODEL --recipes REFERENCE,RECIPE --device cpu")
        ratio = ratio_with_ci(got[args.recipe], got[args.reference])
        if ratio is None:
            raise SystemExit(f"pair {i + 1}: a run recorded no steady-call latencies, so there is no ratio")
        rows.append({**got, "ratio": ratio})
        print(f"pair {i + 1}: {args.recipe} {ratio['ratio']:.2f}× {args.reference} "
              f"[{ratio['low']:.2f}, {ratio['high']:.2f}]", flush=True)
    data = {"model": args.model, "reference": args.reference, "recipe": args.recipe, "settings": settings,
            "rows": rows, "cpu_count": os.cpu_count(), "commit": git_commit()["git_commit"] or "unknown",
            "commit_dirty": git_commit()["git_dirty"],
            "note": "each pair a fresh `diffquant bench` process (one worker per recipe) without the "
                    "quantized-weights cache; CI: bootstrap over each worker's steady calls (unpaired)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(data, indent=2) + "\n")
    print(render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
