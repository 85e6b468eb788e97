"""Do two sweeps of the same recipes agree within their confidence intervals? (issue 10: "two
sweeps of the same recipes on an idle machine agree within their CIs").

Takes two data files written by ``benchmarks/bench_recipes_cpu.py`` (each one sweep: the runs'
``diffquant results --format json`` plus commit, machine and host load), recomputes in each sweep
every recipe's latency ratio to the reference (p50 of its steady calls over the reference's, with
the same bootstrap 95% CI the tables show, ``diffquant.store.summary.latency_ratio``: over the calls,
and over the worker processes first where the sweep ran several per recipe, ``--processes``),
and writes both sweeps' ratios side by side with the verdict per recipe:

- ``overlap``: the two 95% intervals share at least one value (the criterion);
- ``each_inside_other``: each sweep's point ratio lies inside the other sweep's interval (stricter,
  shown beside).

    python benchmarks/bench_recipes_cpu.py --processes 3 --repeats 3 --force         # sweep A (docs' table)
    python benchmarks/bench_recipes_cpu.py --processes 3 --repeats 3 --force --db out/b.db \\
        --data docs/data/recipes_cpu_flux_dev_slice_b.json                           # sweep B, right after
    python benchmarks/sweep_agreement.py docs/data/recipes_cpu_flux_dev_slice.json \\
        docs/data/recipes_cpu_flux_dev_slice_b.json                                   # writes docs/data/sweep_agreement.json

``render(data)`` gives the Markdown table docs/benchmarks.md shows (scripts/render_docs.py).
Only recipes that ran in both sweeps are compared; a recipe that ran in one only is listed apart.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from diffquant.atomic import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "data" / "sweep_agreement.json"
SAMPLES = "call.latency_s.samples"


def latency_ratios(data: Mapping[str, Any], reference: str) -> dict[str, dict[str, float | int]]:
    """Per recipe that ran: its p50 call-latency ratio to ``reference`` in this sweep, with the
    bootstrap 95% CI, the sample counts and the worker processes behind them."""
    from diffquant.store.summary import latency_ratio

    runs = {r["recipe"]: r for r in data["runs"] if r.get("status") == "ok" and r["metrics"].get(SAMPLES)}
    if reference not in runs:
        raise SystemExit(f"the sweep has no successful {reference!r} run to compare against; "
                         f"recipes that ran: {', '.join(sorted(runs)) or 'none'}")
    ref = runs[reference]["metrics"]
    out: dict[str, dict[str, float | int]] = {}
    for recipe, run in runs.items():
        estimate = latency_ratio(run["metrics"], ref)
        if estimate is None:
            continue
        out[recipe] = {"ratio": estimate.mean, "low": estimate.ci_low, "high": estimate.ci_high,
                       "n": len(run["metrics"][SAMPLES]), "n_reference": len(ref[SAMPLES]),
                       "processes": int(run["metrics"].get("run.processes") or 1),
                       "processes_reference": int(ref.get("run.processes") or 1)}
    return out


def sweep_summary(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    return {"file": str(path.relative_to(REPO) if path.is_relative_to(REPO) else path), "commit": data.get("commit"),
            "host_load": data.get("host_load"), "started": min((r["started_at"] for r in data["runs"]), default=None)}


def compare(a: Mapping[str, Any], b: Mapping[str, Any], reference: str) -> list[dict[str, Any]]:
    ra, rb = latency_ratios(a, reference), latency_ratios(b, reference)
    rows = []
    for recipe in [r for r in ra if r in rb and r != reference]:
        x, y = ra[recipe], rb[recipe]
        overlap = x["low"] <= y["high"] and y["low"] <= x["high"]
        inside = y["low"] <= x["ratio"] <= y["high"] and x["low"] <= y["ratio"] <= x["high"]
        rows.append({"recipe": recipe, "a": x, "b": y, "overlap": overlap, "each_inside_other": inside})
    return rows


def render(data: Mapping[str, Any]) -> str:
    lines = ["| recipe | sweep A ×bf16 [95% CI] | sweep B ×bf16 [95% CI] | intervals overlap | each inside the other's |",
             "|---|---|---|---|---|"]

    def cell(e: Mapping[str, Any]) -> str:
        processes = e.get("processes", 1)
        return f"{e['ratio']:.2f}× [{e['low']:.2f}, {e['high']:.2f}]" + (f" ({processes} proc)" if processes > 1 else "")

    for row in data["rows"]:
        lines.append(f"| {row['recipe']} | {cell(row['a'])} | {cell(row['b'])} | "
                     f"{'yes' if row['overlap'] else 'NO'} | {'yes' if row['each_inside_other'] else 'no'} |")
    agree = sum(r["overlap"] for r in data["rows"])
    lines.append("")
    lines.append(f"{agree} of {len(data['rows'])} recipes' ratios agree (overlapping 95% intervals).")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_a", type=Path)
    parser.add_argument("sweep_b", type=Path)
    parser.add_argument("--reference", default="bf16")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    a, b = (json.loads(p.read_text(encoding="utf-8")) for p in (args.sweep_a, args.sweep_b))
    rows = compare(a, b, args.reference)
    if not rows:
        raise SystemExit("the two sweeps have no recipe in common that ran in both; nothing to compare")
    names_a = {r["recipe"] for r in a["runs"] if r.get("status") == "ok"}
    names_b = {r["recipe"] for r in b["runs"] if r.get("status") == "ok"}
    data = {"reference": args.reference, "criterion": "the two sweeps' bootstrap 95% CIs of the p50 latency ratio overlap",
            "sweep_a": sweep_summary(a, args.sweep_a.resolve()), "sweep_b": sweep_summary(b, args.sweep_b.resolve()),
            "only_in_one": sorted(names_a ^ names_b), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(data, indent=2) + "\n")
    print(render(data))
    return 0 if all(r["overlap"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
