"""``diffquant report``: the HTML report of a results database."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report", help="write a self-contained HTML report (tables, plots, image grids)",
        description="Write an HTML report of a results database: the seed-style table (memory after "
                    "loading, peak memory, inference time, compile time) with ratios against the "
                    "reference, quality with confidence intervals, plots, image grids with click-to-zoom, "
                    "per-recipe details, failed runs and the environment. Opens from disk; no server.")
    parser.add_argument("--db", type=Path, required=True, help="results database (SQLite file)")
    parser.add_argument("-o", "--output", type=Path, default=Path("report.html"),
                        help="HTML file to write (default: report.html); images go to <name>_files/ beside it")
    parser.add_argument("--reference", default=None,
                        help="reference recipe for ratios (default: the one the scores used, else bf16)")
    parser.add_argument("--inline", action="store_true",
                        help="embed the images in the HTML file instead of a folder beside it")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from diffquant.report import write_report

    out = write_report(args.db, args.output, reference=args.reference, inline=args.inline)
    print(f"Report written to {out}" + ("" if args.inline else f" (images in {out.parent / (out.stem + '_files')})"))
    return 0
