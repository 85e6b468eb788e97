"""``diffquant results``: the stored runs as the seed's table (with ratios), Markdown, CSV or JSON."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_DB = Path("diffquant-results") / "results.db"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "results", help="show or export benchmark results from a results database",
        description="Print stored runs as the seed's table (memory after loading, peak memory, inference "
                    "time, compile time, weights, load peak, and ratios against the reference in the same "
                    "sweep), or export them as Markdown, CSV (every metric a column) or JSON.")
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help=f"results database (default: {DEFAULT_DB})")
    parser.add_argument("--format", choices=("table", "md", "csv", "json"), default="table",
                        help="output format (default: table)")
    parser.add_argument("--model", default=None, help="only runs of this model")
    parser.add_argument("--status", choices=("ok", "error"), default=None, help="only runs with this status")
    parser.add_argument("--sweep", default=None, help="only runs of this sweep id")
    parser.add_argument("--reference", default="bf16", help="recipe the ratios are against (default: bf16)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="write to this file (atomically) instead of printing")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from diffquant.atomic import write_text_atomic as write_atomic
    from diffquant.errors import DiffquantError
    from diffquant.store import ResultsDB, render

    if not args.db.is_file():
        raise DiffquantError(f"No results database at {str(args.db)!r}.",
                             hint="run `diffquant bench` first, or pass --db PATH")
    with ResultsDB(args.db) as db:
        runs = db.runs(model=args.model, status=args.status, sweep_id=args.sweep)
        if args.output is not None:
            fmt = "md" if args.format == "table" else args.format
            write_atomic(args.output, render(db, runs, fmt, args.reference))
            print(f"Wrote {len(runs)} runs to {args.output}")
            return 0
        if args.format != "table":
            print(render(db, runs, args.format, args.reference), end="")
            return 0
    print_results(args.db, runs, "table", args.reference)
    _print_arena(args.db)
    return 0


def _print_arena(db_path: Path) -> None:
    """The blind test's detection rates, when the database holds votes (``diffquant arena``)."""
    from diffquant.arena.summary import print_section

    print_section(db_path)


# Piped or captured output has no terminal width; rich would then wrap tables at 80 columns.
PIPE_WIDTH = 400


def table_console() -> Any:
    """A rich Console for tables: the terminal's width, or wide enough to keep every column on one
    line when stdout is not a terminal (tables take their natural width, not this one)."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=PIPE_WIDTH)


def print_results(db_path: Path, runs: Sequence[Any], fmt: str, reference: str, *,
                  wall_s: float | None = None) -> None:
    """The seed's table, one per sweep, with the counters named and errors spelled out."""
    from rich.markup import escape
    from rich.table import Table

    from diffquant.store import ResultsDB, render
    from diffquant.store.summary import counters_legend, first_line, summary_rows, table

    if fmt != "table":
        with ResultsDB(db_path) as db:
            print(render(db, runs, fmt, reference), end="")
        return
    console = table_console()
    if not runs:
        console.print("No runs.")
        return
    sweeps: dict[str, list[Any]] = {}
    for run in runs:
        sweeps.setdefault(run.sweep_id, []).append(run)
    for sweep_id, members in sweeps.items():
        s = members[0].settings
        title = (f"{members[0].model} · {s.get('device')} · {s.get('steps')} steps · {s.get('width')}x"
                 f"{s.get('height')} · {len(s.get('prompts') or [])} prompts × {len(s.get('seeds') or [])} seeds "
                 f"· sweep {sweep_id}")
        headers, cells = table(summary_rows(members, reference))
        grid = Table(title=escape(title), show_lines=False)
        for i, header in enumerate(headers):
            grid.add_column(escape(header), justify="left" if i < 2 else "right", overflow="fold")
        for line in cells:
            status = line[1]
            line = [escape(c) for c in line]
            color = "red" if not status.startswith("ok") else "yellow" if "contended" in status else "green"
            line[1] = f"[{color}]{escape(status)}[/]"
            grid.add_row(*line)
        console.print(grid)
        console.print(f"[dim](n×) = ratio to {reference!r} in the same sweep. "
                      + escape("; ".join(counters_legend([str(m.settings.get('device', 'cpu')) for m in members])))
                      + "[/]")
        env = next((m.env for m in members if m.ok and m.env), members[0].env)
        if env:
            from diffquant.bench.sweep import environment_summary

            console.print(f"[dim]Machine: {escape(environment_summary(env))}[/]")
        contended = [m.recipe for m in members if m.ok and m.metrics.get("host.contended")]
        if contended:
            console.print(f"[yellow]contended:[/] {escape(', '.join(contended))} ran while other work loaded the "
                          "host; re-run them on an idle machine before trusting their times")
        errors = [m for m in members if not m.ok]
        for m in errors:
            console.print(f"[red]{escape(m.recipe)}[/]: {escape(first_line(m.error or '', 400))}")
    if wall_s is not None:
        console.print(f"Sweep wall time {wall_s:.1f} s · database {db_path}")
