"""Plan, then measure, the same recipes on the zoo models, and print predicted / measured side by side.

For each model: ``diffquant plan`` predicts every recipe's weights (exact), memory after loading and
peak memory (modelled); a ``bench`` sweep then runs the recipes, each in its own worker process, and
the two are printed together with their ratio, and written to ``docs/data/plan_accuracy.json``.
Measured counters: weights ``weights.total_bytes``; after loading ``load.rss_mib`` (CPU) or
``load.cuda_reserved_mib`` (CUDA); peak ``max(load.peak_rss_mib, gen.peak_rss_mib)`` (CPU) or
``gen.peak_gpu_used_mib.nvml`` / ``gen.cuda_max_reserved_mib`` + the CUDA context (CUDA).

    python benchmarks/plan_accuracy.py                                  # tiny-flux, tiny-sd3, flux-dev-slice, CPU
    python benchmarks/plan_accuracy.py --models zoo:flux-dev-slice --device cuda --out out/plan_accuracy_cuda.json

Run it alone on an idle machine (memory is what it measures, but the sweeps take tens of minutes on
2 cores). The acceptance target: peak within 15% per recipe on zoo:flux-dev-slice on CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from diffquant.atomic import write_text_atomic

MIB = 2**20
CPU_RECIPES = ("bf16", "bnb-nf4", "bnb-int8", "torchao-int8wo", "torchao-fp8wo", "quanto-int4", "quanto-int8",
               "gguf-q4_k", "gguf-q8_0", "fp8-layerwise", "bf16+offload-group-leaf(disk)")
CUDA_RECIPES = ("bf16", "bnb-nf4", "bnb-int8", "torchao-int4wo", "torchao-int8wo", "torchao-fp8wo", "quanto-int4",
                "quanto-int8", "gguf-q2_k", "gguf-q4_1", "gguf-q8_0", "fp8-layerwise", "bnb-nf4+offload-model",
                "fp8-layerwise+offload-group-leaf(stream)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="zoo:tiny-flux,zoo:tiny-sd3,zoo:flux-dev-slice")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--recipes", default=None, help="comma-separated (default: a list per device)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: the model's)")
    parser.add_argument("--db", type=Path, default=Path("out") / "plan_accuracy" / "results.db")
    parser.add_argument("--out", type=Path, default=Path("docs") / "data" / "plan_accuracy.json")
    parser.add_argument("--force", action="store_true", help="re-run recipes already in --db")
    return parser.parse_args(argv)


def measured(m: dict[str, Any], device: str) -> dict[str, float | None]:
    def num(key: str) -> float | None:
        v = m.get(key)
        return float(v) if isinstance(v, (int, float)) else None

    if device == "cuda":
        from diffquant.plan.runtime import CUDA_CONTEXT_BYTES

        reserved = num("gen.cuda_max_reserved_mib")
        peak = num("gen.peak_gpu_used_mib.nvml") or (reserved + CUDA_CONTEXT_BYTES / MIB if reserved else None)
        after = num("load.cuda_reserved_mib")
    else:
        peaks = [v for v in (num("load.peak_rss_mib"), num("gen.peak_rss_mib")) if v is not None]
        peak, after = (max(peaks) if peaks else None), num("load.rss_mib")
    weights = num("weights.total_bytes")
    return {"weights_mib": weights / MIB if weights else None, "after_load_mib": after, "peak_mib": peak}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from diffquant.arguments import parse_width_height
    from diffquant.bench import SweepOptions, resolve_settings, run_sweep
    from diffquant.commands.bench import split_recipes
    from diffquant.plan import plan_model

    recipes = split_recipes(args.recipes) if args.recipes else list(CUDA_RECIPES if args.device == "cuda" else CPU_RECIPES)
    width, height = parse_width_height(args.size) if args.size else (None, None)
    results = []
    for model in split_recipes(args.models):
        settings = resolve_settings(model, steps=args.steps, height=height, width=width, device=args.device,
                                    repeats=1, prompts=["a red circle on a blue background"])
        plan = plan_model(model, recipes, device=args.device, height=settings.height, width=settings.width,
                          steps=settings.steps)
        report = run_sweep(SweepOptions(model=model, recipes=recipes, settings=settings, db_path=args.db,
                                        force=args.force, quant_cache_dir=None, save_images=False))
        rows = {r.recipe: r for r in report.ordered_rows()}
        for p in plan.recipes:
            run = rows.get(p.recipe)
            entry: dict[str, Any] = {"model": model, "device": args.device, "recipe": p.recipe}
            if p.memory is not None:
                mem = p.memory
                entry["predicted"] = {"weights_mib": mem.weights_bytes / MIB, "after_load_mib": mem.after_load_bytes / MIB,
                                      "peak_mib": max(mem.peak_bytes, mem.load_peak_bytes) / MIB,
                                      "modelled_mib": {k: v / MIB for k, v in mem.modelled.items()}}
            entry["measured"] = measured(run.metrics, args.device) if run is not None and run.ok else None
            entry["error"] = (run.error or "").splitlines()[0] if run is not None and not run.ok else None
            results.append(entry)
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps({"schema": "diffquant.plan_accuracy/1", "rows": results}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def render(results: list[dict[str, Any]]) -> str:
    """The predicted / measured table (docs/plan.md renders it from docs/data/plan_accuracy.json)."""
    header = ("| model | recipe | weights: plan / measured (MiB) | after load: plan / measured | "
              "peak: plan / measured | peak ratio |")
    lines = [header, "|---|---|---|---|---|---:|"]
    for e in results:
        p, m = e.get("predicted") or {}, e.get("measured") or {}
        cells = []
        for key in ("weights_mib", "after_load_mib", "peak_mib"):
            a, b = p.get(key), m.get(key)
            cells.append(f"{a:.1f} / {b:.1f}" if a is not None and b is not None else f"{a or '-'} / {b or '-'}")
        ratio = (f"{p['peak_mib'] / m['peak_mib']:.2f}" if p.get("peak_mib") and m.get("peak_mib") else
                 (e.get("error") or "-")[:60])
        lines.append(f"| {e['model']} | {e['recipe']} | {' | '.join(cells)} | {ratio} |")
    return "\n".join(lines)


def print_table(results: list[dict[str, Any]]) -> None:
    print(render(results))

if __name__ == "__main__":
    sys.exit(main())
