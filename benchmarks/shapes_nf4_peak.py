"""bnb-nf4's generation peak of model memory against bf16's on zoo:shapes, over several fresh
sweeps (issue 10: "bnb-nf4's generation peak of model memory is ≤ 0.6× bf16's (its weights are
0.45×)" in the fresh-clone demo).

Each repetition is one ``diffquant bench zoo:shapes --recipes bf16,bnb-nf4 --device cpu`` in a
fresh process with an empty quantized-weights cache (what a fresh clone's demo does: bnb quantizes
on load) and its own database; the script reads back ``gen.model_peak_rss_mib`` (the model's own
generation peak: RSS above the worker's post-import baseline, less the runtime residue) and the
weights' bytes, and writes per repetition the ratio with the host's load average, plus the commit.

    python benchmarks/shapes_nf4_peak.py [--repeats 10] [--out docs/data/shapes_nf4_peak.json]

``render(data)`` gives the table docs/benchmarks.md shows (scripts/render_docs.py). Memory barely
depends on the host's load, but run it alone all the same.
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
DEFAULT_OUT = REPO / "docs" / "data" / "shapes_nf4_peak.json"
BAR = 0.6
PEAK = "gen.model_peak_rss_mib"
KEEP = (PEAK, "gen.peak_rss_mib", "gen.runtime_residue_mib", "weights.total_bytes", "load.model_rss_mib",
        "load.quant_cache_used", "host.contended", "host.loadavg_1m.max")


def one_sweep(model: str, workdir: Path) -> dict[str, dict[str, Any]]:
    """One fresh bench of bf16 and bnb-nf4; the kept counters per recipe."""
    db = workdir / "results.db"
    bench = [sys.executable, "-m", "diffquant.cli", "bench", model, "--recipes", "bf16,bnb-nf4", "--device", "cpu",
             "--db", str(db), "--quant-cache", str(workdir / "quant-cache"), "--no-report",
             "--images", str(workdir / "images")]
    subprocess.run(bench, check=True, stdout=subprocess.DEVNULL)
    out = workdir / "runs.json"
    subprocess.run([sys.executable, "-m", "diffquant.cli", "results", "--db", str(db), "--format", "json", "-o", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    runs = json.loads(out.read_text(encoding="utf-8"))["runs"]
    return {r["recipe"]: {k: r["metrics"].get(k) for k in KEEP} for r in runs if r.get("status") == "ok"}


def render(data: Mapping[str, Any]) -> str:
    lines = [("| sweep | bf16 model peak MiB | bnb-nf4 model peak MiB | ×bf16 | weights ×bf16 | "
             f"≤ {BAR}× | host load 1 min, max during the runs |"), "|---|---|---|---|---|---|---|"]
    for i, row in enumerate(data["rows"], 1):
        bf16, nf4 = row["bf16"], row["bnb-nf4"]
        lines.append(f"| {i} | {bf16[PEAK]:.1f} | {nf4[PEAK]:.1f} | {row['ratio']:.2f}× | {row['weights_ratio']:.2f}× | "
                     f"{'yes' if row['ratio'] <= BAR else 'NO'} | "
                     f"{max(bf16['host.loadavg_1m.max'] or 0, nf4['host.loadavg_1m.max'] or 0):.2f} |")
    ratios = [r["ratio"] for r in data["rows"]]
    lines += ["", (f"{sum(r <= BAR for r in ratios)} of {len(ratios)} sweeps at or under {BAR}×; "
                  f"ratios {min(ratios):.2f}–{max(ratios):.2f}×.")]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from diffquant.bench.env import git_commit

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="zoo:shapes")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    rows = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            got = one_sweep(args.model, Path(tmp))
        if "bf16" not in got or "bnb-nf4" not in got:
            raise SystemExit(f"sweep {i + 1}: a run failed (got {sorted(got)}); see `diffquant bench` output")
        ratio = got["bnb-nf4"][PEAK] / got["bf16"][PEAK]
        weights = got["bnb-nf4"]["weights.total_bytes"] / got["bf16"]["weights.total_bytes"]
        rows.append({**got, "ratio": ratio, "weights_ratio": weights})
        print(f"sweep {i + 1}: bnb-nf4 model peak {ratio:.2f}× bf16 (weights {weights:.2f}×)", flush=True)
    data = {"model": args.model, "bar": BAR, "counter": PEAK, "rows": rows, "cpu_count": os.cpu_count(),
            "commit": git_commit()["git_commit"] or "unknown",
            "note": "each sweep a fresh `diffquant bench` process with an empty quantized-weights cache"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(data, indent=2) + "\n")
    print(render(data))
    return 0 if all(r["ratio"] <= BAR for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
