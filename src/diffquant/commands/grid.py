"""``diffquant grid``: the comparison grid PNG of a results database."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "grid", help="write the image comparison grid (rows: prompt x seed, columns: recipes)",
        description="Write a PNG grid like the seed article's figures: one row per prompt and seed, one "
                    "column per recipe (reference first), each column labelled with peak memory, latency "
                    "and the main quality score. One block per sweep.")
    parser.add_argument("--db", type=Path, required=True, help="results database (SQLite file)")
    parser.add_argument("-o", "--output", type=Path, default=Path("grid.png"), help="PNG to write (default: grid.png)")
    parser.add_argument("--reference", default=None, help="reference recipe (default: the one the scores used, else bf16)")
    parser.add_argument("--max-rows", type=int, default=12, help="at most this many prompt x seed rows (default: 12)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from diffquant.errors import DiffquantError
    from diffquant.report import write_grid

    if args.max_rows < 1:
        raise DiffquantError(f"--max-rows must be at least 1, got {args.max_rows}.")
    out = write_grid(args.db, args.output, reference=args.reference, max_rows=args.max_rows)
    print(f"Grid written to {out}")
    return 0
