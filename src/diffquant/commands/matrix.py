"""``diffquant matrix``: which backend × offload × compile combinations work on this machine,
each cell a real run in its own worker process."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from diffquant.arguments import argtype, parse_device, parse_steps, parse_timeout, parse_width_height

DEFAULT_MODEL = "zoo:tiny-flux"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from diffquant.bench.matrix import DEFAULT_OFFLOAD, DEFAULT_QUANT

    parser = subparsers.add_parser(
        "matrix", help="backend × offload × compile: what works on this machine, and why not",
        description="Run every combination once (load + one short call) in its own worker process with a "
                    "short timeout, and print a matrix of ok / fails / n/a with the reasons. n/a cells are "
                    "refused before running (this device cannot do them); fails cells ran and failed.")
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"model (default: {DEFAULT_MODEL})")
    parser.add_argument("--quant", default=",".join(DEFAULT_QUANT),
                        help=f"comma-separated quantization tokens (default: {','.join(DEFAULT_QUANT)})")
    parser.add_argument("--offload", default=";".join(DEFAULT_OFFLOAD),
                        help=f"semicolon-separated offload tokens, 'none' for no offload "
                             f"(default: {';'.join(DEFAULT_OFFLOAD)})")
    parser.add_argument("--compile", choices=("both", "on", "off"), default="both",
                        help="compile axis (default: both)")
    parser.add_argument("--steps", type=argtype(parse_steps), default=2,
                        help="denoising steps per call (default: 2)")
    parser.add_argument("--size", type=argtype(parse_width_height), default=None,
                        help="WIDTHxHEIGHT, or one number for a square (default: the model's)")
    parser.add_argument("--device", type=argtype(parse_device), default=None,
                        help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--timeout", type=argtype(parse_timeout), default=300.0,
                        help="seconds per cell (default: 300)")
    parser.add_argument("--format", choices=("table", "md", "json"), default="table", help="output format")
    parser.add_argument("-o", "--output", type=Path, default=None, help="also write the matrix to this file")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from diffquant.arguments import check_size_for_model
    from diffquant.atomic import write_text_atomic as write_atomic
    from diffquant.bench.matrix import cells_json, matrix_table, plan_cells, run_matrix
    from diffquant.bench.sweep import resolve_settings
    from diffquant.commands.bench import default_quant_cache
    from diffquant.components import resolve_model

    width, height = args.size or (None, None)
    check_size_for_model(resolve_model(args.model), width, height)
    settings = resolve_settings(args.model, prompts=["a red circle on a blue background"], seeds=[0],
                                steps=args.steps, height=height, width=width, device=args.device, repeats=0)
    quant = [q.strip() for q in args.quant.split(",") if q.strip()]
    offload = [o.strip() for o in args.offload.split(";") if o.strip()]
    compile_modes = {"both": [False, True], "on": [True], "off": [False]}[args.compile]
    cells = plan_cells(quant, offload, compile_modes, settings.device)
    console = Console(stderr=True)
    todo = sum(c.status == "pending" for c in cells)
    console.print(f"Matrix on {args.model} ({settings.device}): {len(cells)} cells, {todo} to run, "
                  f"timeout {args.timeout:g} s each")
    done = [0]

    def on_cell(cell: Any, stage: str) -> None:
        if stage == "start":
            done[0] += 1
            console.print(f"  [{done[0]}/{todo}] {cell.recipe} ...", end="")
        elif cell.wall_s is not None:
            console.print(f" {cell.status} ({cell.wall_s:.0f} s)")

    run_matrix(args.model, settings, cells, timeout_s=args.timeout, quant_cache_dir=default_quant_cache(),
               on_cell=on_cell)
    headers, rows, notes = matrix_table(cells)
    if args.format == "json":
        text = json.dumps({"model": args.model, "device": settings.device, "cells": cells_json(cells)}, indent=2)
    else:
        text = _markdown(headers, rows, notes)
    if args.output is not None:
        write_atomic(args.output, text + "\n")
    if args.format == "table":
        _print_table(headers, rows, notes, f"{args.model} on {settings.device}")
    else:
        print(text)
    return 0


def _markdown(headers: list[str], rows: list[list[str]], notes: list[str]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines + [""] + [n.replace("\n", " ") + "  " for n in notes])


def _print_table(headers: list[str], rows: list[list[str]], notes: list[str], title: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    grid = Table(title=escape(title))
    for header in headers:
        grid.add_column(escape(header))
    colours = {"ok": "green", "fails": "red", "n/a": "yellow", "invalid": "magenta"}
    for row in rows:
        cells = [escape(row[0])]
        for cell in row[1:]:
            colour = colours.get(cell.split(" ")[0], "white")
            cells.append(f"[{colour}]{escape(cell)}[/]")
        grid.add_row(*cells)
    console.print(grid)
    for note in notes:
        console.print(escape(note))
