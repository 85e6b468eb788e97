"""``diffquant arena``: the blind "spot the original" test in the browser, or its statistics."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "arena", help="blind test in the browser: can people spot the quantized image? (needs gradio)",
        description="Serve a page that shows the images of a sweep blind — the reference and a quantized "
                    "image of the same prompt and seed (pairwise), or the reference among N quantized images "
                    "(grid) — and asks which is the original. Votes go into the results database; the "
                    "detection rate per recipe comes with a Wilson 95%% interval and an exact binomial test "
                    "against chance. --stats prints or exports the statistics without serving.")
    parser.add_argument("--db", type=Path, required=True, help="results database (SQLite file) of a sweep")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 lets "
                             "colleagues on your network in)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--recipes", default=None, help="comma-separated recipes to show (default: every "
                                                        "quantized recipe with a reference image)")
    parser.add_argument("--mode", choices=("pairwise", "grid"), default="pairwise",
                        help="pairwise: reference vs one quantized image; grid: reference among all (default: "
                             "pairwise)")
    parser.add_argument("--reference", default="bf16", help="recipe of the original (default: bf16)")
    parser.add_argument("--sweep", default=None, help="only this sweep id (default: every sweep)")
    parser.add_argument("--rate", type=float, default=2.0,
                        help="rounds + votes per second allowed per session, bursts of 20 (default: 2)")
    parser.add_argument("--stats", action="store_true", help="print the statistics of the stored votes and exit")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table",
                        help="with --stats: output format (default: table)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="with --stats: write CSV or JSON to this file (atomically)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from diffquant.errors import DiffquantError

    if args.stats:
        return _stats(args)
    if not 0 < args.port < 65536:
        raise DiffquantError(f"--port must be 1..65535, got {args.port}.")
    if args.rate <= 0:
        raise DiffquantError(f"--rate must be positive, got {args.rate}.")
    try:
        import gradio  # noqa: F401
    except ImportError as exc:
        raise DiffquantError("The arena needs Gradio, which is not installed.",
                             hint="pip install 'diffquant[arena]'") from exc
    from diffquant.arena.service import Arena, ArenaSettings
    from diffquant.arena.ui import is_loopback, serve

    recipes = tuple(r.strip() for r in args.recipes.split(",") if r.strip()) if args.recipes else None
    arena = Arena(args.db, ArenaSettings(mode=args.mode, reference=args.reference, recipes=recipes,
                                         sweep=args.sweep, rate_per_s=args.rate))
    shown = ", ".join(sorted({arena.pool.recipes[r] for r in arena.pool.run_ids}))
    print(f"Arena ({args.mode}) over {len(arena.pool.run_ids)} recipes: {shown}")
    print(f"Open http://{'localhost' if is_loopback(args.host) else args.host}:{args.port}/ "
          f"— votes go to {arena.store.path}; Ctrl-C to stop.")
    if not is_loopback(args.host):
        print(f"Listening on {args.host}: anyone who can reach this machine on port {args.port} can vote.")
    serve(arena, host=args.host, port=args.port)
    return 0


def _stats(args: argparse.Namespace) -> int:
    from diffquant.arena.summary import print_section, read_summary
    from diffquant.atomic import write_text_atomic as write_atomic

    summary = read_summary(args.db)
    if args.output is not None:
        fmt = "json" if args.format == "table" and args.output.suffix == ".json" else args.format
        text = summary.to_json() if fmt == "json" else summary.to_csv()
        write_atomic(args.output, text)
        print(f"Wrote the statistics of {summary.votes} votes to {args.output}")
        return 0
    if args.format == "json":
        print(summary.to_json(), end="")
    elif args.format == "csv":
        print(summary.to_csv(), end="")
    elif summary.votes:
        print_section(args.db)
    else:
        print(f"No votes in {args.db} yet: run `diffquant arena --db {args.db}` and vote.")
    return 0
