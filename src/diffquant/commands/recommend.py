"""``diffquant recommend``: the recipes that fit a memory budget, best first, and why the others lost."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DEFAULT_DB = Path("diffquant-results") / "results.db"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "recommend", help="the Pareto-best recipes under a memory budget (measured, else predicted)",
        description="Recommend the recipes that fit a memory budget: the Pareto-best over memory, latency "
                    "and quality. Measured runs come from the results database; recipes it lacks are "
                    "predicted by `diffquant plan` (and marked so). Every excluded recipe says why.",
        epilog="examples:\n  diffquant recommend zoo:flux-dev-random --budget 16GB --device cuda\n"
               "  diffquant recommend zoo:tiny-flux --budget 2GiB --device cpu --db runs/results.db "
               "--min-quality psnr=30\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default=None,
                        help="Hub id, local folder or zoo:NAME (default: the only model in the database)")
    parser.add_argument("--budget", required=True,
                        help="memory budget: 16GB or 16GiB (both 2^30 bytes per GB), 900MiB, 1.5e10 (bytes)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="device (default: cuda)")
    parser.add_argument("--db", type=Path, default=None,
                        help=f"results database (default: {DEFAULT_DB} when it exists, else predictions only)")
    parser.add_argument("--recipes", default=None, help="recipes to predict (default: plan's list)")
    parser.add_argument("--max-latency", type=float, default=None, metavar="S",
                        help="drop recipes slower than S seconds per call (measured)")
    parser.add_argument("--min-quality", default=None, metavar="METRIC=V",
                        help="drop recipes scoring worse than V (a minimum for psnr/ssim, a maximum for lpips)")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from diffquant.commands.bench import split_recipes
    from diffquant.errors import DiffquantError
    from diffquant.plan import parse_budget
    from diffquant.plan.recommend import parse_min_quality, recommend

    budget = parse_budget(args.budget)
    min_quality = parse_min_quality(args.min_quality)
    if args.max_latency is not None and args.max_latency <= 0:
        raise DiffquantError(f"--max-latency must be positive, got {args.max_latency:g}.")
    db_path = _database(args.db)
    model = args.model or _only_model(db_path)
    result = recommend(model, budget, device=args.device, db_path=db_path, max_latency_s=args.max_latency,
                       min_quality=min_quality, recipes=split_recipes(args.recipes) if args.recipes else None)
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(render(result))
    return 0 if result.fits else 1


def _database(path: Path | None) -> Path | None:
    """The database to read: the one given (which must hold runs), else the default when present."""
    from diffquant.errors import DiffquantError
    from diffquant.store import ResultsDB

    if path is None:
        return DEFAULT_DB if DEFAULT_DB.is_file() else None
    if not path.is_file():
        raise DiffquantError(f"No results database at {str(path)!r}.",
                             hint="run `diffquant bench MODEL --db FILE` first, or leave out --db to "
                                  "recommend from predictions alone")
    with ResultsDB(path) as db:
        empty = not db.runs()
    if empty:
        raise DiffquantError(f"The results database {str(path)!r} holds no runs.",
                             hint="run `diffquant bench MODEL --db FILE` first, or leave out --db to "
                                  "recommend from predictions alone")
    return path


def _only_model(db_path: Path | None) -> str:
    from diffquant.errors import DiffquantError
    from diffquant.store import ResultsDB

    if db_path is None:
        raise DiffquantError("No model given and no results database to take it from.",
                             hint="name the model, e.g. `diffquant recommend zoo:flux-dev-random --budget 16GB`")
    with ResultsDB(db_path) as db:
        models = sorted({r.model for r in db.runs()})
    if len(models) != 1:
        raise DiffquantError(f"The database holds runs of {len(models)} models; name one.",
                             choices=models, hint="e.g. `diffquant recommend MODEL --budget 16GB`")
    return models[0]


def render(result: Any) -> str:
    from diffquant.plan import format_bytes

    lines = [(f"{result.model} on {result.device}, budget {format_bytes(result.budget_bytes)}"
             f" ({result.budget_bytes / 1e9:.3g} GB)")]
    if not result.fits:
        lines.append("Nothing fits in this budget.")
        if result.smallest is not None:
            s = result.smallest
            lines.append(f"The smallest recipe is {s.recipe}: {format_bytes(s.memory_bytes or 0)} ({s.source}).")
    for i, c in enumerate(result.recommended):
        head = "Recommended" if i == 0 else "Alternative"
        figures = [format_bytes(c.memory_bytes or 0)]
        if c.latency_s is not None:
            figures.append(f"{c.latency_s:.2f} s/call")
        if c.quality is not None:
            ci = (f" [{c.quality.ci_low:.3g}, {c.quality.ci_high:.3g}]"
                  if c.quality.ci_low is not None and c.quality.ci_high is not None else "")
            figures.append(f"{c.quality.metric} {c.quality.mean:.3g}{ci}")
        lines.append(f"{head}: {c.recipe} ({c.source}): {', '.join(figures)}"
                     + (f"  -- vs {result.recommended[0].recipe}: {c.tradeoff}" if c.tradeoff else ""))
    if result.excluded:
        lines.append("Excluded:")
        for c in result.excluded:
            lines.append(f"  {c.recipe}: {c.excluded}")
    for note in result.notes:
        lines.append(f"note: {note}")
    lines.append("Memory: the larger of load peak and generation peak (measured: RSS on CPU, device-wide "
                 "GPU memory on CUDA when recorded; predicted: `diffquant plan`'s peak).")
    return "\n".join(lines)
