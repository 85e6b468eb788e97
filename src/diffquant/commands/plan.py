"""``diffquant plan``: every recipe's memory for a model, predicted from its config files alone."""

from __future__ import annotations

import argparse
import json
from typing import Any

from diffquant.arguments import argtype, parse_steps, parse_width_height

LEGEND = ("Weights: exact, every component's stored bytes in the backend's own format (from the configs "
          "on the meta device). Resident: weights held in {mem} once loaded (offload moves some out{cpu}). "
          "After load: resident + {proc} + what loading leaves resident (modelled). Peak: weights in {mem} at "
          "the busiest moment + the same + a call's extras + the largest activation phase (denoiser, VAE "
          "decode, text encoders; modelled). `--format json` names every modelled part. GiB = 2^30 bytes.")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "plan", help="predict each recipe's memory for a model from its config files (no weights loaded)",
        description="Instantiate every component of the pipeline on the meta device from its config files "
                    "alone (a local folder, zoo:NAME, or a Hub id of which only JSON configs are read), "
                    "apply each recipe's real rules (default components, skipped modules, keep lists, "
                    "GGUF tensor types, fp8 skip patterns, offload) and print the exact weight bytes and "
                    "the modelled memory after loading and at peak.",
        epilog="examples:\n  diffquant plan zoo:flux-dev-random --device cuda\n"
               "  diffquant plan black-forest-labs/FLUX.1-dev --recipes bf16,bnb-nf4,gguf-q4_k --size 1024x1024\n"
               "  diffquant plan zoo:tiny-flux --device cpu --format json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="Hub id (configs only), local pipeline folder or zoo:NAME")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="the device the recipes would run on (default: cuda)")
    parser.add_argument("--recipes", default=None,
                        help="comma-separated recipes (default: the seed's list on cuda, a CPU list on cpu)")
    parser.add_argument("--size", type=argtype(parse_width_height), default=None,
                        help="WIDTHxHEIGHT, or one number for a square (default: the model's)")
    parser.add_argument("--steps", type=argtype(parse_steps), default=None,
                        help="denoising steps (default: the model's)")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default: 1)")
    parser.add_argument("--components", action="store_true", help="also print each component's bytes")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from diffquant.commands.bench import split_recipes
    from diffquant.errors import DiffquantError
    from diffquant.plan import plan_model

    if args.batch < 1:
        raise DiffquantError(f"--batch must be at least 1, got {args.batch}.")
    width, height = args.size or (None, None)
    recipes = split_recipes(args.recipes) if args.recipes else None
    result = plan_model(args.model, recipes, device=args.device, height=height, width=width,
                        steps=args.steps, batch=args.batch)
    if args.format == "json":
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(render_table(result, components=args.components))
    return 0


def render_table(result: Any, *, components: bool = False) -> str:
    """The plan as a plain-text table, with the legend that says what is exact and what is modelled."""
    from diffquant.plan import format_bytes

    s = result.shape
    lines = [(f"{result.model} ({result.pipeline_class}) on {result.device}, {s.width}x{s.height}, "
             f"batch {s.batch}, {s.steps} steps")]
    header = ("recipe", "weights", "resident", "after load", "peak", "note")
    rows = []
    for r in result.recipes:
        if r.memory is None:
            rows.append((r.recipe, "-", "-", "-", "-", f"does not apply: {r.why_not}"))
            continue
        m = r.memory
        note = "" if r.runs_here else f"cannot run on {result.device}: {_first_sentence(r.why_not)}"
        note = "; ".join(x for x in (note, *m.notes) if x)
        rows.append((r.recipe, format_bytes(m.weights_bytes), format_bytes(m.resident_weights_bytes),
                     format_bytes(m.after_load_bytes), format_bytes(m.peak_bytes), note))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i]) for i, c in enumerate(row[:-1])]
        lines.append("  ".join(cells) + ("  " + row[-1] if row[-1] else ""))
    if components:
        lines.append("")
        for r in result.recipes:
            for c in r.components.values():
                lines.append(f"{r.recipe:40} {c.name:16} {c.quant or 'plain':18} {format_bytes(c.stored_bytes):>10}"
                             f"  (unquantized {format_bytes(c.plain_bytes)})")
    cuda = result.device.startswith("cuda")
    lines.append("")
    lines.append(LEGEND.format(mem="GPU memory" if cuda else "RAM",
                               proc="the CUDA context" if cuda else "the process",
                               cpu="" if cuda else "; unquantized components stay memory-mapped until a call "
                                                   "reads them"))
    return "\n".join(lines)


def _first_sentence(text: str | None) -> str:
    return (text or "").split(". ")[0].rstrip(".")
