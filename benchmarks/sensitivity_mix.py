"""Uniform recipe vs the community's rule-based mix vs the sensitivity-based mix, through bench.

For each base recipe (default: bnb-nf4 and gguf-q2_k on zoo:shapes):
1. `diffquant sensitivity` at layer granularity (transformer and the text encoders the recipe
   quantizes) -> a mixed recipe at +10% of the quantized components' weight bytes, and one at the
   rule-based mix's extra bytes (the equal-bytes comparison);
2. the rule-based mix: for GGUF the named mix (Q2_K -> Q2_K_M, llama.cpp's rules), for other
   backends stable-diffusion.cpp's rule (embedders and final layers kept precise);
3. one `diffquant bench` sweep of bf16 + all of them (same prompts, seeds, steps), scored
   against bf16 (PSNR/SSIM with bootstrap CIs, shapes adherence);
4. writes docs/data/sensitivity_mix.json and prints the table (render: scripts/render_docs.py).

The sweep measures each group inside the uniform recipe (every group quantized, the error its
promotion removes: leave-one-out; docs/sensitivity.md); `--context alone` measures each group by
itself, the rest at the reference precision.

Run it alone on an idle machine (it times nothing, but a contended run is slow):
    python benchmarks/sensitivity_mix.py [--model zoo:shapes] [--recipes bnb-nf4,gguf-q2_k] [--context alone]
        [--psnr-top 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diffquant.bench.env import git_commit  # the commit recorded with the data

REPO = Path(__file__).resolve().parents[1]
# Top-level names as one-name globs: bitsandbytes also matches a plain word as any path segment,
# and "proj_out" would then keep every single block's proj_out too.
# Groups whose end-image error is measured alone (the rest are estimated from the proxy).
PSNR_TOP = 8  # --psnr-top
RULE_SKIP = ("[x]_embedder", "[c]ontext_embedder", "time_text_embed.*", "norm_out.*", "[p]roj_out")


def rule_based(recipe: str) -> str:
    """The community's rule for this backend, as an ordinary recipe string."""
    from diffquant.recipes import parse_recipe

    spec = parse_recipe(recipe).quant[0]
    if spec.backend == "gguf":
        return f"gguf-{spec.qtype}_m" if spec.qtype.endswith("_k") else recipe
    # stable-diffusion.cpp keeps the embedders and the final layers out of quantization.
    return f"{recipe}(skip={'|'.join(RULE_SKIP)})@transformer" + _text_encoder_part(recipe)


def _text_encoder_part(recipe: str) -> str:
    from diffquant.recipes import parse_recipe
    from diffquant.recipes.catalog import BACKENDS

    spec = parse_recipe(recipe).quant[0]
    return "" if BACKENDS[spec.backend].denoiser_only else f"+{recipe}@text_encoder_2"


def denoiser_only(recipe: str) -> bool:
    """Whether the recipe's backend quantizes the denoiser alone (then there is nothing to split)."""
    from diffquant.recipes import parse_recipe
    from diffquant.recipes.catalog import BACKENDS

    return BACKENDS[parse_recipe(recipe).quant[0].backend].denoiser_only


def component_bytes(model: str, recipe: str) -> dict[str, int]:
    from diffquant.inspect import component_stats
    from diffquant.pipeline import load_pipeline

    return {name: s.weight_bytes for name, s in component_stats(load_pipeline(model, recipe, device="cpu")).items()}


def quantized_components(model: str, recipe: str) -> tuple[str, ...]:
    """The components the base recipe quantizes: the bytes the budget is a share of."""
    from diffquant.components import read_components, resolve_model, resolve_targets
    from diffquant.recipes import parse_recipe

    return tuple(resolve_targets(parse_recipe(recipe), read_components(resolve_model(model))))


def sensitivity_mixes(model: str, recipe: str, extra_bytes: list[int], context: str = "uniform",
                      psnr_top: int = PSNR_TOP) -> tuple[dict, list[str]]:
    from diffquant.components import read_components, resolve_model
    from diffquant.recipes import parse_recipe
    from diffquant.sensitivity import measure_sensitivity, mix_recipe

    result, models = measure_sensitivity(model, recipe, granularity="layer", psnr_top=psnr_top, device="cpu",
                                         context=context)
    components = read_components(resolve_model(model))
    mixes, chosen = [], []
    for budget in extra_bytes:
        mixed, choices, _spent = mix_recipe(result, parse_recipe(recipe), models, budget, components)
        mixes.append(mixed.name)
        chosen.append([c.group for c in choices])
    summary = {"seconds": result.seconds, "context": result.context, "uniform_rel_error": result.uniform_rel_error,
               "uniform_image_mse": result.uniform_image_mse,
               "calibration": {"denoiser": [result.denoiser_uniform_rel_error, result.denoiser_uniform_image_mse],
                               **{c: [p.uniform_rel_error, p.uniform_image_mse] for c, p in result.encoders.items()}},
               "top": [(g.name, g.rel_error, g.image_mse_est, g.image_mse) for g in result.groups[:12]],
               "chosen": chosen, "quant_bytes": result.total_quant_bytes()}
    return summary, mixes


def quality(db: Path) -> dict[str, dict]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT r.recipe, q.metric, q.mean, q.ci_low, q.ci_high, q.n FROM quality_run q "
            "JOIN runs r ON r.id = q.run_id WHERE q.status = 'ok'").fetchall()
    out: dict[str, dict] = {}
    for recipe, metric, mean, lo, hi, n in rows:
        out.setdefault(recipe, {})[metric] = {"mean": mean, "ci_low": lo, "ci_high": hi, "n": n}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="zoo:shapes")
    parser.add_argument("--recipes", default="bnb-nf4,gguf-q2_k")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--extra", type=float, default=0.10, help="share of extra bytes for the mix (0.10)")
    parser.add_argument("--psnr-top", type=int, default=PSNR_TOP,
                        help=f"groups whose end-image error (in context: gain) the sweep measures ({PSNR_TOP})")
    parser.add_argument("--context", default="uniform", choices=("alone", "uniform"),
                        help="where each group's sensitivity is measured (default: uniform; alone: the "
                             "method of the data recorded before the in-context sweep)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "data" / "sensitivity_mix.json")
    args = parser.parse_args()
    started = time.time()
    load_before = os.getloadavg()
    rows = []
    to_bench = ["bf16"]
    for recipe in args.recipes.split(","):
        counted = quantized_components(args.model, recipe)

        def quant_bytes(name: str, counted: tuple[str, ...] = counted) -> dict[str, int]:
            sizes = component_bytes(args.model, name)
            return {"transformer_bytes": sizes["transformer"], "quantized_components": list(counted),
                    "quantized_components_bytes": sum(sizes[c] for c in counted)}

        uniform = quant_bytes(recipe)["quantized_components_bytes"]
        rule = rule_based(recipe)
        rule_extra = quant_bytes(rule)["quantized_components_bytes"] - uniform
        budget = int(args.extra * uniform)
        summary, (mix, mix_equal) = sensitivity_mixes(args.model, recipe, [budget, max(rule_extra, 0)],
                                                      args.context, args.psnr_top)
        entries = [("uniform", recipe), ("rule-based", rule), (f"sensitivity +{args.extra:.0%}", mix),
                   ("sensitivity, rule's bytes", mix_equal)]
        for kind, name in entries:
            rows.append({"base": recipe, "kind": kind, "recipe": name, **quant_bytes(name)})
            to_bench.append(name)
        rows.append({"base": recipe, "kind": "sweep", "sensitivity": summary})
        if not denoiser_only(recipe):  # where the error comes from: each component alone
            for part in ("transformer", "text_encoder_2"):
                name = f"{recipe}@{part}"
                rows.append({"base": recipe, "kind": f"only {part}", "recipe": name, **quant_bytes(name)})
                to_bench.append(name)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "mix.db"
        cmd = [sys.executable, "-m", "diffquant.cli", "bench", args.model, "--recipes", ",".join(to_bench),
               "--seeds", args.seeds, "--db", str(db), "--images", str(Path(tmp) / "images"),
               "--repeats", "1", "--format", "json"]
        subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
        scores = quality(db)
    from diffquant.recipes import parse_recipe

    for row in rows:
        if "recipe" in row:
            row["quality"] = scores.get(parse_recipe(row["recipe"]).name, {})
    bf16 = scores.get("bf16", {})
    where = "each group alone quantized" if args.context == "alone" else \
        "each group promoted inside the uniform recipe (the error its promotion removes)"
    data = {"model": args.model, "seeds": args.seeds, "rows": rows, "bf16": bf16, "context": args.context,
            "psnr_top": args.psnr_top,
            "method": "sensitivity: layer granularity over the transformer and the text encoders the recipe "
                      f"quantizes, {where}, relative MSE of the denoiser output on captured calls, calibrated per "
                      f"component to end-image MSE, the top {args.psnr_top} groups' end-image MSE measured; mix: greedy "
                      "on end-image error removed per byte added; bytes: the components the base recipe quantizes",
            "host_load_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
            "seconds": time.time() - started, "commit": (git_commit()["git_commit"] or "unknown")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print_table(data)
    return 0


def recovered(psnr_uniform: float, psnr_mix: float) -> float:
    """Share of the uniform recipe's error (MSE against bf16) that the mix removes: PSNR against
    bf16 is infinite for bf16 itself, so the gap is measured in MSE (+3.01 dB = half the error)."""
    return 1.0 - 10 ** (-(psnr_mix - psnr_uniform) / 10)


def print_table(data: dict) -> None:
    by_base: dict[str, list[dict]] = {}
    for row in data["rows"]:
        if "recipe" in row:
            by_base.setdefault(row["base"], []).append(row)
    for base, rows in by_base.items():
        uniform = next(r for r in rows if r["kind"] == "uniform")
        u_psnr = uniform["quality"].get("psnr", {}).get("mean")
        print(f"\n{base} on {data['model']}")
        for r in rows:
            q = r["quality"].get("psnr", {})
            key = "quantized_components_bytes" if "quantized_components_bytes" in r else "transformer_bytes"
            extra = (r[key] - uniform[key]) / uniform[key]
            gain = "" if u_psnr is None or q.get("mean") is None or r is uniform else \
                f"error removed {recovered(u_psnr, q['mean']):5.1%}"
            print(f"  {r['kind']:28s} +{extra:6.1%} bytes  PSNR {q.get('mean', float('nan')):6.2f} "
                  f"[{q.get('ci_low', float('nan')):.2f}, {q.get('ci_high', float('nan')):.2f}] {gain:22s} "
                  f"{r['recipe'][:80]}")


if __name__ == "__main__":
    sys.exit(main())
