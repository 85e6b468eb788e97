"""The seed's tables on a CUDA machine: every seed recipe on the full-size FLUX.1-dev architecture
with random weights (``zoo:flux-dev-random``, ~17B parameters, ~34 GB on disk in bf16), or on the
real ``black-forest-labs/FLUX.1-dev`` if it is in the Hugging Face cache, with the seed's
settings (50 steps, 1024x1024, guidance 3.5, the seed's three prompts, seed 0), each recipe in
its own worker process.

Prints our measurement beside the seed's published figures (1x H100 80GB) for each recipe:
memory after loading, peak memory (``torch.cuda.max_memory_reserved``, as the seed printed it),
inference time and compile time, and the ratios to bf16 measured in the same sweep.

    python benchmarks/bench_flux_dev_cuda.py                          # zoo:flux-dev-random
    python benchmarks/bench_flux_dev_cuda.py --model black-forest-labs/FLUX.1-dev --db out/flux.db

Needs: one CUDA GPU with >= 40 GB (80 GB for the bf16 baseline to fit without offload), >= 64 GB
of RAM and ~70 GB of disk for the random model plus GGUF files in the quantized-weight cache.
Random weights make the *images* meaningless but the memory and time figures representative.
Not run in CI; written for an H100 host.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffquant.bench import SweepOptions, resolve_settings, run_sweep
from diffquant.bench.sweep import SEED_PROMPTS, environment_summary
from diffquant.commands.bench import SweepDisplay, default_quant_cache, split_recipes
from diffquant.recipes import SEED_RECIPES, parse_recipe
from diffquant.store import RunRow
from diffquant.store.summary import first_line

# The seed article's figures on 1x H100 80GB: (memory after loading GB, peak GB, inference s, compile s).
SEED_FIGURES: dict[str, tuple[float, float, float, float | None]] = {
    "bf16": (31.447, 36.166, 12, None),
    "bnb-nf4": (12.584, 17.281, 12, None),
    "bnb-int8": (19.273, 24.432, 27, None),
    "torchao-int4wo": (10.635, 14.654, 109, None),
    "torchao-int8wo": (17.020, 21.482, 15, None),
    "torchao-fp8wo": (17.016, 21.488, 15, None),
    "quanto-int4": (12.254, 16.139, 109, None),
    "quanto-int8": (17.330, 21.814, 15, None),
    "quanto-fp8": (16.395, 20.898, 16, None),
    "gguf-q2_k": (13.264, 17.752, 26, None),
    "gguf-q4_1": (16.838, 21.326, 23, None),
    "gguf-q8_0": (21.502, 25.973, 15, None),
    "fp8-layerwise": (23.682, 28.451, 13, None),
    "bnb-nf4+offload-model": (12.383, 12.383, 17, None),
    "bnb-int8+offload-model": (19.182, 23.428, 27, None),
    "fp8-layerwise+offload-group-leaf(stream)": (9.264, 14.232, 58, None),
    "torchao-int4wo+compile(fullgraph,mode=max-autotune)": (10.635, 15.238, 6, 285),
    "torchao-int8wo+compile(fullgraph,mode=max-autotune)": (17.020, 22.473, 8, 851),
    "torchao-fp8wo+compile(fullgraph,mode=max-autotune)": (17.016, 22.115, 8, 545),
}
GIB = 1024.0  # MiB per GiB: the seed's "GB" are torch's bytes / 1024**3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="zoo:flux-dev-random")
    parser.add_argument("--recipes", default=",".join(SEED_RECIPES), help="comma-separated (default: the seed's)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", default="1024x1024")
    parser.add_argument("--prompts", type=int, default=3, help="how many of the seed's prompts (1-3)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3 * 3600.0, help="per recipe (compile takes ~15 min)")
    parser.add_argument("--db", type=Path, default=Path("out") / "bench_flux_dev_cuda" / "results.db")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--no-report", action="store_true", help="skip quality scoring and the HTML report")
    return parser.parse_args(argv)


def _gib(run: RunRow, key: str) -> float | None:
    value = run.metrics.get(key)
    return value / GIB if isinstance(value, (int, float)) else None


def _num(value: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def print_comparison(rows: list[RunRow]) -> None:
    ref = next((r for r in rows if r.recipe == "bf16" and r.ok), None)
    print("\n| recipe | after load GiB (seed) | peak GiB (seed) | inference s (seed) | compile s (seed) "
          "| after load ×bf16 (seed) | peak ×bf16 (seed) | time ×bf16 (seed) |")
    print("|" + "---|" * 8)
    seed_ref = SEED_FIGURES["bf16"]
    for r in rows:
        seed = SEED_FIGURES.get(r.recipe)
        s = seed or (None, None, None, None)
        if not r.ok:
            print(f"| {r.recipe} | error: {first_line(r.error or '', 120).replace('|', '/')} | | | | | | |")
            continue
        after, peak = _gib(r, "load.cuda_reserved_mib"), _gib(r, "gen.cuda_max_reserved_mib")
        time_s, compile_s = r.metrics.get("call.latency_s.p50"), r.metrics.get("compile.time_s")

        def rel(key: str, idx: int, r: RunRow = r, s: tuple = s, seed: tuple | None = seed) -> str:
            mine = r.metrics.get(key)
            theirs = ref.metrics.get(key) if ref else None
            ours = f"{mine / theirs:.2f}" if isinstance(mine, (int, float)) and theirs else "-"
            return f"{ours} ({s[idx] / seed_ref[idx]:.2f})" if seed and s[idx] is not None else ours

        print(f"| {r.recipe} | {_num(after)} ({_num(s[0])}) | {_num(peak)} ({_num(s[1])}) "
              f"| {_num(time_s, '{:.1f}')} ({_num(s[2], '{:.0f}')}) | {_num(compile_s, '{:.0f}')} ({_num(s[3], '{:.0f}')}) "
              f"| {rel('load.cuda_reserved_mib', 0)} | {rel('gen.cuda_max_reserved_mib', 1)} "
              f"| {rel('call.latency_s.p50', 2)} |")
    print("\nOurs: load.cuda_reserved_mib, gen.cuda_max_reserved_mib, call.latency_s.p50, compile.time_s "
          "(= first call - median steady call). Seed: 1x H100 80GB, FLUX.1-dev weights. "
          "Device-wide figures (NVML) are in the database: load.gpu_used_mib.nvml, gen.peak_gpu_used_mib.nvml.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("This benchmark needs a CUDA GPU (torch sees none). On CPU use benchmarks/bench_recipes_cpu.py.",
              file=sys.stderr)
        return 2
    from diffquant.arguments import parse_seeds, parse_width_height
    from diffquant.commands.bench import write_reports

    width, height = parse_width_height(args.size) if args.size else (None, None)
    settings = resolve_settings(args.model, prompts=list(SEED_PROMPTS[: max(1, min(args.prompts, 3))]),
                                seeds=parse_seeds(args.seeds), steps=args.steps, width=width, height=height,
                                guidance_scale=3.5, device="cuda", repeats=args.repeats)
    recipes = [parse_recipe(r).name for r in split_recipes(args.recipes)]
    options = SweepOptions(model=args.model, recipes=recipes, settings=settings, db_path=args.db,
                           timeout_s=args.timeout, force=args.force, quant_cache_dir=default_quant_cache())
    with SweepDisplay() as display:
        report = run_sweep(options, on_event=display.on_event)
    rows = report.ordered_rows()
    env = next((r.env for r in rows if r.ok), rows[0].env)
    print(f"\n{args.model} · cuda · {settings.steps} steps · {settings.width}x{settings.height} · "
          f"{len(settings.prompts)} prompt(s) × {len(settings.seeds)} seed(s)")
    print(f"Machine: {environment_summary(env)}")
    print_comparison(rows)
    if not args.no_report:
        write_reports(report.db_path, report.reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
