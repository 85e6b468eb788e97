"""``diffquant score``: (re)score a results database against the reference run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "score", help="score quality of stored runs against the reference (PSNR, SSIM, LPIPS, ...)",
        description="Compare each image of every successful run with the reference run's image of the "
                    "same prompt and seed (same model, device and settings), and store per-image "
                    "values and per-run means with 95%% bootstrap confidence intervals in the database.")
    parser.add_argument("--db", type=Path, default=None, help="results database (SQLite file)")
    parser.add_argument("--reference", default="bf16", help="recipe of the reference run (default: bf16)")
    parser.add_argument("--metrics", default=None,
                        help="comma-separated metric names (default: all; see --list-metrics)")
    parser.add_argument("--clip-model", default=None,
                        help="CLIP model id (in the Hugging Face cache) or local folder for clip-score "
                             "(default: $DIFFQUANT_CLIP_MODEL or openai/clip-vit-base-patch32)")
    parser.add_argument("--lpips-net", default="alex", choices=("alex", "vgg", "squeeze"),
                        help="LPIPS backbone (default: alex)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default: 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument("--only-new", action="store_true",
                        help="keep scores that are still current (same reference run and bootstrap settings); "
                             "by default everything is recomputed")
    parser.add_argument("--list-metrics", action="store_true", help="list the metrics and exit")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from diffquant.errors import DiffquantError
    from diffquant.quality import METRICS, MetricOptions, score_db
    from diffquant.quality.scoring import BootstrapSettings

    if args.list_metrics:
        for info in METRICS:
            direction = "higher is better" if info.higher_is_better else "lower is better"
            ref = "vs reference" if info.needs_reference else "no reference"
            print(f"{info.name:18} {direction:17} {ref:13} {info.description}")
        return 0
    if args.db is None:
        raise DiffquantError("No results database given.", hint="pass --db results.db")
    if args.resamples < 1:
        raise DiffquantError(f"--resamples must be at least 1, got {args.resamples}.")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    options = MetricOptions(lpips_net=args.lpips_net, **({"clip_model": args.clip_model} if args.clip_model else {}))
    results = score_db(args.db, args.reference, metrics, options=options,
                       bootstrap=BootstrapSettings(resamples=args.resamples, seed=args.seed), force=not args.only_new)
    print_results(args.db, [m.name for m in METRICS.resolve(metrics)])
    print(f"{len(results)} score{'' if len(results) == 1 else 's'} computed; stored in {args.db} "
          "(tables quality_run, quality_image).")
    return 0


def print_results(db_path: Path, metrics: list[str]) -> None:
    """The stored scores of ``metrics``, one line per run and metric; unavailable ones once each."""
    from diffquant.figures import format_estimate
    from diffquant.quality.store import open_existing, read_quality

    with open_existing(db_path) as db:
        recipes = {r.id: r.recipe for r in db.runs()}
        quality = read_quality(db.connection)
    rows = [row for run_id in recipes for name, row in quality.get(run_id, {}).items() if name in metrics]
    if not rows:
        print("No successful run with images to score.")
        return
    width = max(len(recipes[r.run_id]) for r in rows)
    unavailable: dict[str, list[str]] = {}
    for row in rows:
        recipe = recipes[row.run_id]
        if row.status == "ok":
            text = format_estimate(row.mean, row.ci_low, row.ci_high, row.unit)
            if row.delta_mean is not None:
                text += "  Δref " + format_estimate(row.delta_mean, row.delta_ci_low, row.delta_ci_high, row.unit,
                                                    signed=True)
            print(f"{recipe:{width}}  {row.metric:18} {text}  (n={row.n})")
        elif row.status == "unavailable":
            reasons = unavailable.setdefault(row.metric, [])
            if row.reason and row.reason not in reasons:
                reasons.append(row.reason)
        elif row.status == "error":
            print(f"{recipe:{width}}  {row.metric:18} error: {row.reason}")
    for metric, reasons in unavailable.items():
        print(f"{metric}: unavailable - {'; '.join(reasons)}")
