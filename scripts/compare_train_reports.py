"""Did a second training run reproduce the shipped ``zoo:shapes`` weights? Compares the sha256 of
every file two ``train_report.json`` files list (``scripts/train_shapes.py`` writes one beside the
weights it trains) and writes the comparison as data.

    python scripts/compare_train_reports.py RERUN/train_report.json \\
        [--shipped src/diffquant/zoo/shapes/weights/train_report.json] \\
        [--note "how the rerun was made"] [--out docs/data/shapes_reproduction.json]

Prints the comparison; ``--out`` also writes it as data (docs/shapes.md's table is
``docs/data/shapes_reproduction.json``; ``render(data)`` gives it, through scripts/render_docs.py).
Exits 0 when every file matches, 1 when a file differs or is missing from either run, 2 when a
report cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from diffquant.atomic import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "src" / "diffquant" / "zoo" / "shapes" / "weights" / "train_report.json"
DEFAULT_OUT = REPO / "docs" / "data" / "shapes_reproduction.json"


def _run(report: dict[str, Any]) -> dict[str, Any]:
    env = report["environment"]
    return {"commit": env.get("git_commit"), "dirty": env.get("git_dirty"), "torch_threads": env.get("torch_threads"),
            "started_at": env.get("started_at"), "finished_at": env.get("finished_at"), "seconds": report["seconds"]}


def compare(shipped: dict[str, Any], rerun: dict[str, Any], note: str) -> dict[str, Any]:
    """Per file: both digests and whether they match; a file only one run wrote is a mismatch."""
    names = sorted(set(shipped["files"]) | set(rerun["files"]))
    files = [{"file": name, "shipped": shipped["files"].get(name), "rerun": rerun["files"].get(name)} for name in names]
    for row in files:
        row["same"] = row["shipped"] is not None and row["shipped"] == row["rerun"]
    return {"note": note, "shipped": _run(shipped), "rerun": _run(rerun), "files": files,
            "identical": all(row["same"] for row in files)}


def render(data: dict[str, Any]) -> str:
    """One row per file: the shipped and the rerun's sha256 (prefix) and whether they match."""
    lines = ["| file | shipped sha256 | rerun sha256 | same |", "|---|---|---|---|"]
    for row in data["files"]:
        short = [f"`{d[:16]}…`" if d else "(not written)" for d in (row["shipped"], row["rerun"])]
        lines.append(f"| `{row['file']}` | {short[0]} | {short[1]} | {'yes' if row['same'] else '**NO**'} |")
    same = sum(row["same"] for row in data["files"])
    lines.append(f"| **all** | | | **{same} of {len(data['files'])}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rerun", type=Path, help="the second run's train_report.json")
    parser.add_argument("--shipped", type=Path, default=SHIPPED)
    parser.add_argument("--note", default="", help="how the rerun was made (kept in the data)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"also write the comparison as JSON here (docs' data: {DEFAULT_OUT.relative_to(REPO)})")
    args = parser.parse_args(argv)
    for path in (args.rerun, args.shipped):
        if not path.is_file():
            print(f"error: {path} does not exist; give a train_report.json written by scripts/train_shapes.py",
                  file=sys.stderr)
            return 2
    reports = []
    for path in (args.shipped, args.rerun):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            print(f"error: cannot read {path}: {exc}", file=sys.stderr)
            return 2
        if not isinstance(report, dict) or not {"files", "environment", "seconds"} <= report.keys():
            print(f"error: {path} is not a training report (it needs 'files', 'environment' and 'seconds', "
                  "as scripts/train_shapes.py writes them)", file=sys.stderr)
            return 2
        reports.append(report)
    data = compare(reports[0], reports[1], args.note)
    if args.out is not None:
        write_text_atomic(args.out, json.dumps(data, indent=2) + "\n")
    print(render(data))
    return 0 if data["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
