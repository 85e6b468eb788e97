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
                       bootstrap=BootstrapSettings(resamples=args.resamples, seed=args.seed))
    print_results(args.db, results)
    return 0


def print_results(db_path: Path, results: list[Any]) -> None:
    from diffquant.quality import METRICS
    from diffquant.quality.store import open_existing
    from diffquant.report.format import format_estimate

    if not results:
        print("No successful run with images to score.")
        return
    with open_existing(db_path) as db:
        recipes = {r.id: r.recipe for r in db.runs()}
    width = max(len(recipes.get(r.run_id, "?")) for r in results)
    unavailable: dict[str, str] = {}
    for res in results:
        recipe = recipes.get(res.run_id, str(res.run_id))
        unit = METRICS.get(res.metric).unit
        if res.status == "ok" and res.estimate is not None:
            text = format_estimate(res.estimate.mean, res.estimate.ci_low, res.estimate.ci_high, unit)
            if res.delta is not None:
                text += "  Δref " + format_estimate(res.delta.mean, res.delta.ci_low, res.delta.ci_high, unit,
                                                    signed=True)
            print(f"{recipe:{width}}  {res.metric:17} {text}  (n={res.estimate.n})")
        elif res.status == "reference":
            continue
        elif res.status == "unavailable":
            unavailable.setdefault(res.metric, res.reason or "")
        else:
            print(f"{recipe:{width}}  {res.metric:17} error: {res.reason}")
    for metric, reason in unavailable.items():
        print(f"{metric}: unavailable - {reason}")
    print(f"Scores stored in {db_path} (tables quality_run, quality_image).")
