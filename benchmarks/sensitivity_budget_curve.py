"""How much of a recipe's error a sensitivity mix removes as its byte budget grows, and how much
of it single groups account for: why GGUF Q2_K misses issue 12's bar on zoo:shapes.

1. `measure_sensitivity` at layer granularity (top groups' end-image error measured alone);
2. mixed recipes at several extra-byte budgets, plus a uniform one-type-up recipe (Q3_K) as the
   "every layer bumped" reference point;
3. each recipe's end images (the model's prompts × seeds) scored against bf16: mean PSNR and the
   share of the uniform recipe's MSE removed (the same measure as benchmarks/sensitivity_mix.py);
4. additivity: the measured single-group end-image errors of the top groups, summed, against the
   uniform recipe's (a mix can only remove what the groups it keeps account for).
Writes docs/data/sensitivity_budget_curve.json. Quality only (load-independent). The sweep
measures each group inside the uniform recipe (leave-one-out), and the additivity row sums the
measured end-image MSE the top groups' promotions remove; with `--context alone` each group is
measured by itself and the row sums their own end-image MSE.

    python benchmarks/sensitivity_budget_curve.py [--model zoo:shapes] [--recipe gguf-q2_k] [--up gguf-q3_k]
        [--context alone] [--budgets 0.05,0.1,0.2,0.4,0.8] [--no-up] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from diffquant.bench.env import git_commit  # the commit recorded with the data

REPO = Path(__file__).resolve().parents[1]
BUDGETS = (0.05, 0.10, 0.20, 0.40, 0.80)


def images(model: str, recipe, prompts: list[str], seeds: list[int]) -> list:
    from diffquant.pipeline import generate, load_pipeline
    from diffquant.quality.metrics import to_tensor

    pipe = load_pipeline(model, recipe, device="cpu")
    return [to_tensor(generate(pipe, p, seed=s).image).float() for p in prompts for s in seeds]


def score(got: list, ref: list) -> dict:
    mses = [float((a - b).pow(2).mean()) for a, b in zip(got, ref, strict=True)]
    psnrs = [10 * math.log10(1 / m) if m > 0 else math.inf for m in mses]
    return {"psnr_mean": sum(psnrs) / len(psnrs), "psnr_min": min(psnrs), "psnr_max": max(psnrs),
            "mse_mean": sum(mses) / len(mses), "n": len(mses)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="zoo:shapes")
    parser.add_argument("--recipe", default="gguf-q2_k")
    parser.add_argument("--up", default="gguf-q3_k", help="the uniform one-type-up recipe to compare")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--psnr-top", type=int, default=8)
    parser.add_argument("--context", default="uniform", choices=("alone", "uniform"),
                        help="where each group's sensitivity is measured (default: uniform; alone: the "
                             "method of the data recorded before the in-context sweep)")
    parser.add_argument("--budgets", default=",".join(str(b) for b in BUDGETS),
                        help="extra-byte shares for the mixes, comma-separated")
    parser.add_argument("--no-up", action="store_true", help="skip the uniform one-type-up recipe")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "data" / "sensitivity_budget_curve.json")
    args = parser.parse_args()

    from diffquant.components import read_components, resolve_model
    from diffquant.inspect import component_stats
    from diffquant.pipeline import load_pipeline
    from diffquant.recipes import parse_recipe
    from diffquant.sensitivity import measure_sensitivity, mix_recipe
    from diffquant.sensitivity.run import _model_prompts

    started, load_before = time.time(), os.getloadavg()[0]
    seeds = [int(s) for s in args.seeds.split(",")]
    prompts = _model_prompts(args.model)
    budgets = [float(b) for b in args.budgets.split(",")]
    result, models = measure_sensitivity(args.model, args.recipe, granularity="layer", psnr_top=args.psnr_top,
                                         device="cpu", context=args.context)
    components = read_components(resolve_model(args.model))
    recipe = parse_recipe(args.recipe)
    counted = [result.denoiser, *result.encoders]

    def weight_bytes(r) -> int:
        stats = component_stats(load_pipeline(args.model, r, device="cpu"))
        return sum(stats[c].weight_bytes for c in counted)

    reference = images(args.model, "bf16", prompts, seeds)
    uniform_bytes = weight_bytes(recipe)
    uniform = score(images(args.model, recipe, prompts, seeds), reference)
    rows = [{"kind": "uniform", "recipe": recipe.name, "bytes": uniform_bytes, **uniform}]
    entries = [(f"sensitivity +{b:.0%}", mix_recipe(result, recipe, models, int(b * uniform_bytes), components))
               for b in budgets]
    for kind, (mixed, choices, _spent) in entries:
        rows.append({"kind": kind, "recipe": mixed.name, "groups_kept": len(choices), "bytes": weight_bytes(mixed),
                     **score(images(args.model, mixed, prompts, seeds), reference)})
    if not args.no_up:
        up = parse_recipe(args.up)
        rows.append({"kind": f"uniform {args.up}", "recipe": up.name, "bytes": weight_bytes(up),
                     **score(images(args.model, up, prompts, seeds), reference)})
    for row in rows:
        row["extra_bytes"] = row["bytes"] / uniform_bytes - 1
        row["error_removed"] = 1 - row["mse_mean"] / uniform["mse_mean"]
    measured = [g for g in result.groups if g.image_mse is not None]
    # context alone: single groups' own image MSE against the denoiser's uniform one; uniform: the
    # image MSE each promotion removes against the uniform recipe's (measured by the sweep itself)
    uniform_image = result.denoiser_uniform_image_mse if result.context == "alone" else result.uniform_image_mse
    additivity = {
        "groups_measured": len(measured), "groups_total": len(result.groups),
        "bytes_share_of_measured": sum(g.bytes_quant for g in measured) / max(1, result.total_quant_bytes()),
        "sum_single_image_mse": sum(g.image_mse for g in measured),
        "uniform_image_mse": uniform_image,
        "share": sum(g.image_mse for g in measured) / uniform_image if uniform_image else None,
        "groups": [(g.name, g.image_mse, g.bytes_quant) for g in measured],
        "note": "sweep seed only (seed 0); the rows above use every seed",
        "context": result.context,
    }
    data = {"model": args.model, "recipe": args.recipe, "context": args.context, "psnr_top": args.psnr_top,
            "seeds": args.seeds,
            "prompts": prompts, "rows": rows, "seconds_sweep": result.seconds,
            "additivity": additivity, "host_load_1min": {"before": load_before, "after": os.getloadavg()[0]},
            "seconds": time.time() - started, "commit": (git_commit()["git_commit"] or "unknown")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(render(data))
    return 0


def render(data: dict) -> str:
    """Markdown table of the curve (scripts/render_docs.py view=script)."""
    lines = [("| recipe | groups kept | bytes vs uniform | PSNR vs bf16, dB (mean) | error removed (mean MSE) "
             "| error removed (from PSNR means) |"), "|---|---|---|---|---|---|"]
    u_psnr = next(r["psnr_mean"] for r in data["rows"] if r["kind"] == "uniform")
    for r in data["rows"]:
        uniform = r["kind"] == "uniform"
        removed = "" if uniform else f"{100 * r['error_removed']:.1f}%"
        from_psnr = "" if uniform else f"{100 * (1 - 10 ** (-(r['psnr_mean'] - u_psnr) / 10)):.1f}%"
        lines.append(f"| {r['kind']} | {r.get('groups_kept', '')} | {100 * r['extra_bytes']:+.1f}% | "
                     f"{r['psnr_mean']:.2f} | {removed} | {from_psnr} |")
    return "\n".join(lines)


def render_additivity(data: dict) -> str:
    a = data["additivity"]
    head = ("| groups measured alone | their share of the recipe's bytes | sum of their end-image MSE / the uniform "
            "recipe's |") if a.get("context", "alone") == "alone" else \
        ("| groups promoted in the uniform recipe | their share of the recipe's bytes | sum of the end-image MSE "
         "their promotions remove / the uniform recipe's |")
    return "\n".join([head, "|---|---|---|",
                      (f"| {a['groups_measured']} of {a['groups_total']} | {100 * a['bytes_share_of_measured']:.1f}% | "
                      f"{100 * a['share']:.1f}% |")])


if __name__ == "__main__":
    sys.exit(main())
