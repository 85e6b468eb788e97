"""Train diffquant's built-in ``zoo:shapes`` model and its adherence scorer on CPU.

    python scripts/train_shapes.py --out DIR  # the shipped weights (run it alone: 2 threads)
    python scripts/train_shapes.py --smoke --out /tmp/shapes-smoke   # seconds

See ``diffquant.zoo.shapes.train`` for the stages and their settings. ``render(report)`` gives the
tables docs/shapes.md shows of the shipped run's ``train_report.json`` (scripts/render_docs.py).
"""

from __future__ import annotations

import sys
from typing import Any

from diffquant.zoo.shapes.train import main

STAGES = (("vae", "VAE"), ("transformer", "transformer + CLIP"), ("scorer", "scorer"), ("eval", "evaluation"))


def render(report: dict[str, Any]) -> str:
    """Table 0: the stages' durations and the environment; table 1: the files written, by hash."""
    env, seconds = report["environment"], report["seconds"]
    lines = ["| stage | seconds |", "|---|---|"]
    lines += [f"| {label} | {seconds[key]:.0f} |" for key, label in STAGES if key in seconds]
    lines.append(f"| **total** | **{seconds['total']:.0f}** ({seconds['total'] / 60:.1f} min) |")
    lines += ["", "| run | value |", "|---|---|",
              f"| machine | {env['cpu_model']}, {env['cpu_count']} cores, torch threads {env['torch_threads']} |",
              f"| versions | torch {env['versions'].get('torch')}, diffusers {env['versions'].get('diffusers')} |",
              f"| code | commit {str(env.get('git_commit'))[:7]}{' (uncommitted changes)' if env.get('git_dirty') else ''} |",
              f"| started, finished | {env.get('started_at')}, {env.get('finished_at')} |"]
    lines += ["", "| file | sha256 |", "|---|---|"]
    lines += [f"| `{path}` | `{digest[:16]}…` |" for path, digest in report["files"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
