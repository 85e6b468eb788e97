"""Wall time of a layer-granularity sensitivity sweep on zoo:flux-dev-slice (issue 12's bar:
under 15 minutes on the project's CPU machine).

Each recipe runs `diffquant sensitivity MODEL --recipe R --groups layer --device cpu --format json`
in a fresh process with the CLI's defaults (4 calls per prompt, the model's prompts and steps,
end-image calibration and the top 3 groups' end-image PSNR): the wall time counts everything a
user waits for, loading included. Writes docs/data/sensitivity_sweep_time.json with the wall
time, the host's load average before and after, the CPU count and the commit.

Run it alone on an idle machine (it is a timing):
    python benchmarks/sensitivity_sweep_time.py [--model zoo:flux-dev-slice] [--recipes bnb-nf4,gguf-q4_k]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from diffquant.bench.env import git_commit  # the commit recorded with the data

REPO = Path(__file__).resolve().parents[1]
BAR_SECONDS = 15 * 60


def sweep(model: str, recipe: str, granularity: str) -> dict:
    cmd = [sys.executable, "-m", "diffquant.cli", "sensitivity", model, "--recipe", recipe, "--groups", granularity,
           "--device", "cpu", "--format", "json"]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    row: dict = {"recipe": recipe, "granularity": granularity, "command": " ".join(cmd[1:]), "exit": proc.returncode,
                 "wall_seconds": wall, "host_load_1min": {"before": load_before, "after": os.getloadavg()[0]},
                 "under_bar": proc.returncode == 0 and wall < BAR_SECONDS}
    if proc.returncode != 0:
        row["stderr_tail"] = proc.stderr[-2000:]
        return row
    data = json.loads(proc.stdout)
    by_component: dict[str, int] = {}
    for group in data["groups"]:
        component = group.get("component") or data["denoiser"]
        by_component[component] = by_component.get(component, 0) + 1
    row.update({"groups": len(data["groups"]), "groups_by_component": by_component,
                "calls": data["settings"]["calls"], "sweep_seconds": data["seconds"],
                "top": [(g["name"], g["rel_error"], g.get("image_mse_est")) for g in data["groups"][:5]]})
    return row


def render(data: dict) -> str:
    """The table docs/sensitivity.md shows (scripts/render_docs.py, view=script)."""
    header = (f"| recipe | groups (by component) | denoiser calls captured (all prompts) | wall time, fresh process | "
              f"under {data['bar_seconds'] // 60} min | host load 1 min, before → after |")
    lines = [header, "|---|---|---|---|---|---|"]
    for r in data["rows"]:
        groups = ", ".join(f"{k} {v}" for k, v in r.get("groups_by_component", {}).items()) or "-"
        load = r["host_load_1min"]
        lines.append(f"| {r['recipe']} | {r.get('groups', '-')} ({groups}) | {r.get('calls', '-')} | "
                     f"{r['wall_seconds'] / 60:.1f} min | {'yes' if r['under_bar'] else 'NO'} | "
                     f"{load['before']:.2f} → {load['after']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="zoo:flux-dev-slice")
    parser.add_argument("--recipes", default="bnb-nf4,gguf-q4_k",
                        help="bnb-nf4 also sweeps T5's layers; a GGUF K-quant also measures each group one type up")
    parser.add_argument("--groups", default="layer")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "data" / "sensitivity_sweep_time.json")
    args = parser.parse_args()
    rows = []
    for recipe in args.recipes.split(","):
        row = sweep(args.model, recipe, args.groups)
        rows.append(row)
        print(f"{recipe}: exit {row['exit']}, {row['wall_seconds']:.0f} s wall, {row.get('groups', '?')} groups, "
              f"load {row['host_load_1min']['before']:.2f} -> {row['host_load_1min']['after']:.2f}, "
              f"{'under' if row['under_bar'] else 'NOT under'} {BAR_SECONDS // 60} min", flush=True)
    data = {"model": args.model, "bar_seconds": BAR_SECONDS, "rows": rows, "cpu_count": os.cpu_count(),
            "commit": (git_commit()["git_commit"] or "unknown"), "note": "wall time of a fresh `diffquant sensitivity` process, loading included"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    return 0 if all(r["under_bar"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
