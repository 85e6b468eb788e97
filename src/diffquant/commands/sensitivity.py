"""``diffquant sensitivity``: which layers of the denoiser a recipe hurts most, and a mixed recipe
that keeps those precise within a byte budget."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from diffquant.arguments import argtype, parse_device, parse_seed, parse_steps


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sensitivity", help="rank the denoiser's and text encoders' layers by the error a recipe causes in each",
        description="Quantize one group of linear layers at a time with RECIPE (the rest at the reference "
                    "precision; --context uniform: quantize every group and promote one at a time) - the "
                    "denoiser's, and the text encoders' the recipe quantizes (their prompts re-encoded) - run the "
                    "denoiser on inputs captured from reference generations and rank the groups by the relative "
                    "error of its output they account for, converted per component to end-image error. "
                    "With --extra-memory or --budget-bytes and -o, write a mixed recipe (TOML) that keeps the "
                    "most sensitive groups precise.")
    parser.add_argument("model", help="Hub id, local pipeline folder, or zoo:NAME")
    parser.add_argument("--recipe", required=True, help="a quantizing recipe, e.g. bnb-nf4 or gguf-q4_k")
    parser.add_argument("--groups", default="layer", help="layer | block | kind (default: layer)")
    parser.add_argument("--context", default="alone",
                        help="alone: each group quantized by itself, the rest at the reference precision; "
                             "uniform: every group quantized, each group's error is what promoting it alone "
                             "removes (leave-one-out: what a mix buys; for a collective error such as "
                             "gguf-q2_k's, with --psnr-top 16 or so) (default: alone)")
    parser.add_argument("--prompts", default=None, help="a text file, one prompt per line (default: the model's)")
    parser.add_argument("--seed", type=argtype(parse_seed), default=0)
    parser.add_argument("--steps", type=argtype(parse_steps), default=None,
                        help="denoising steps (default: the model's)")
    parser.add_argument("--calls", type=int, default=4,
                        help="denoiser calls kept per prompt, spread over the schedule (default: 4)")
    parser.add_argument("--psnr-top", type=int, default=3, help="end-image PSNR for the N top groups (default: 3)")
    parser.add_argument("--denoiser-only", action="store_true",
                        help="rank the denoiser's groups only, not the text encoders' the recipe quantizes")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="skip the end-image run per component (rank by the denoiser-output error alone)")
    parser.add_argument("--device", type=argtype(parse_device), default=None,
                        help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--db", type=Path, default=None, help="append the ranking to this results database")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--extra-memory", default=None,
                        help="mixed recipe budget as a share of the quantized layers' bytes, e.g. 10%%")
    budget.add_argument("--budget-bytes", type=int, default=None, help="mixed recipe budget in bytes")
    parser.add_argument("-o", "--output", type=Path, default=None, help="write the mixed recipe here (TOML)")
    parser.add_argument("--top", type=int, default=20, help="rows in the printed table (default: 20)")
    parser.add_argument("--format", default="table", choices=("table", "json"))
    parser.set_defaults(func=run)
    return parser


def _prompts(path: Path | None) -> list[str] | None:
    from diffquant.errors import DiffquantError

    if path is None:
        return None
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise DiffquantError(f"Cannot read prompts file {str(path)!r}: {exc.strerror}.",
                             hint="give a text file with one prompt per line") from None
    if not lines:
        raise DiffquantError(f"Prompts file {str(path)!r} is empty.", hint="one prompt per line")
    return lines


def run(args: argparse.Namespace) -> int:
    import sys

    from diffquant.atomic import write_text_atomic as write_atomic
    from diffquant.components import read_components, resolve_model
    from diffquant.errors import DiffquantError
    from diffquant.recipes import load_recipe, recipe_to_toml
    from diffquant.sensitivity import measure_sensitivity, mix_recipe
    from diffquant.sensitivity.mix import budget_from

    wants_mix = args.extra_memory is not None or args.budget_bytes is not None
    if wants_mix != (args.output is not None):
        raise DiffquantError("A mixed recipe needs both a budget and an output file.",
                             hint="add --extra-memory 10% (or --budget-bytes N) together with -o mixed.toml")
    if args.output is not None and args.output.exists():
        raise DiffquantError(f"{str(args.output)!r} exists.", hint="choose a new file name, or delete this one")
    for flag, value in (("--calls", args.calls), ("--psnr-top", args.psnr_top + 1), ("--top", args.top)):
        if value < 1:
            raise DiffquantError(f"{flag} must be a positive number, got {value}.")
    recipe = load_recipe(args.recipe)
    quiet = args.format == "json"

    def progress(i: int, n: int, name: str) -> None:
        if not quiet:
            print(f"\r[{i + 1}/{n}] {name[:60]:60s}", end="", file=sys.stderr, flush=True)

    result, models = measure_sensitivity(args.model, recipe, granularity=args.groups,
                                           prompts=_prompts(args.prompts), seed=args.seed, steps=args.steps,
                                           calls_per_prompt=args.calls, psnr_top=args.psnr_top,
                                           device=args.device, progress=progress,
                                           text_encoders=not args.denoiser_only, calibrate=not args.no_calibrate,
                                           context=args.context)
    if not quiet:
        print(file=sys.stderr)
    mix: dict[str, Any] | None = None
    if wants_mix:
        extra = args.budget_bytes if args.budget_bytes is not None else args.extra_memory
        budget = budget_from(result, extra)
        components = read_components(resolve_model(args.model))
        mixed, choices, spent = mix_recipe(result, recipe, models, budget, components)
        write_atomic(args.output, recipe_to_toml(mixed))
        mix = {"recipe": mixed.name, "hash": mixed.hash, "file": str(args.output), "budget_bytes": budget,
               "bytes_added": spent, "method": "greedy on end-image error removed per byte added"
               + (" (in-context gains)" if result.context == "uniform" else ""),
               "choices": [c.__dict__ for c in choices]}
    if args.db is not None:
        from diffquant.sensitivity.store import save_result

        save_result(args.db, result)
    if args.format == "json":
        print(json.dumps({**result.to_dict(), "mix": mix}, indent=2, default=str))
        return 0
    _print_table(result, args.top)
    if mix is not None:
        print(f"\nmixed recipe ({mix['method']}): {len(mix['choices'])} groups kept, "
              f"+{mix['bytes_added'] / 2**20:.2f} MiB of {mix['budget_bytes'] / 2**20:.2f} MiB allowed")
        print(f"  {mix['recipe']}")
        print(f"  written to {mix['file']} (hash {mix['hash']})")
    return 0


def _print_table(result: Any, top: int) -> None:
    import math

    from rich.console import Console
    from rich.table import Table

    total = result.total_quant_bytes() or 1
    up = result.upgrade or "reference"
    in_context = result.context == "uniform"
    table = Table(title=f"{result.model} · {result.recipe} · {result.denoiser} by {result.granularity} "
                        f"({result.settings['calls']} captured calls; context: {result.context})")
    columns = ("rank", "group", "rel. error removed", f"left at {up}", "end MSE removed", "share of bytes",
               "end PSNR dB, promoted") if in_context else \
        ("rank", "group", "rel. error", f"rel. error at {up}", "end MSE (est.)", "share of bytes", "end PSNR dB")
    for col in columns:
        table.add_column(col, justify="left" if col == "group" else "right")
    for rank, g in enumerate(result.groups[:top], start=1):
        table.add_row(str(rank), g.name, f"{g.rel_error:.3e}", f"{g.rel_error_upgrade:.3e}",
                      "" if not g.image_mse_est else _end_error(g, in_context),
                      f"{100 * g.bytes_quant / total:.1f}%", "" if g.psnr_db is None else f"{g.psnr_db:.2f}")
    console = Console(width=max(120, Console().width))
    console.print(table)
    if not in_context:
        console.print(f"uniform {result.recipe}: relative error {result.uniform_rel_error:.3e} with every group "
                      f"quantized; {len(result.groups)} groups; {result.seconds:.1f} s. rel. error = "
                      "||y_q - y_ref||² / ||y_ref||² of the denoiser output (lower is better); end MSE (est.) = "
                      "it times its component's end-image rate (the ranking's order).")
    else:
        mse = result.uniform_image_mse
        image = f" (end PSNR {10 * math.log10(1 / mse):.2f} dB)" if mse else ""
        console.print(f"uniform {result.recipe}: relative error {result.uniform_rel_error:.3e}{image} with every "
                      f"group quantized; {len(result.groups)} groups; {result.seconds:.1f} s. rel. error removed = "
                      "that minus the same with the group alone promoted to the reference precision (relative "
                      "error = ||y_q - y_ref||² / ||y_ref||² of the denoiser output; higher: promoting it helps "
                      f"more); left at {up} = what remains with it one type up instead; end MSE removed = measured "
                      "on the end image for the groups with a PSNR, else estimated at its component's end-image "
                      "rate (the ranking's order).")


def _end_error(group: Any, in_context: bool) -> str:
    """Alone: the estimate, as the column always showed; in context: measured where it was."""
    if not in_context:
        return f"{group.image_mse_est:.2e}"
    return f"{group.image_error():.2e}" + ("" if group.image_mse is not None else " (est.)")

