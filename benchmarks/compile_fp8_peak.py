"""torchao-fp8wo under torch.compile on a real transformer: the model's peak memory and steady call
time with diffquant's inductor options for weight-only-quantized compiles (``fixed``) and without
them (``unfixed``, what torch.compile does by default), beside bf16, uncompiled fp8wo and regional
compile. See ``benchmarks/inductor_fp8_dequant.py`` for why the unfixed compile peaks high.

Each variant runs in a fresh interpreter with a fresh inductor cache: imports, the runtime warmed,
a baseline, the pipeline loaded, the first call (compile), then ``--calls`` steady calls. Memory is
the model's own: anonymous RSS plus resident weight-file pages, minus the baseline (the runtime
residue is not subtracted, so it is a few tens of MiB above ``diffquant bench``'s figure). Timing
on a busy machine means nothing: run it idle.

    python benchmarks/compile_fp8_peak.py                                  # zoo:flux-dev-slice, ~10 min idle
    python benchmarks/compile_fp8_peak.py --model zoo:tiny-flux --size 64 --variants unfixed,fixed
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

FP8 = "torchao-fp8wo"
COMPILE = "+compile(fullgraph,mode=max-autotune)"
VARIANTS = {
    "bf16": "bf16",
    "fp8wo": FP8,
    "unfixed": FP8 + COMPILE,
    "fixed": FP8 + COMPILE,
    "regional": FP8 + "+compile(regional,fullgraph,mode=max-autotune)",
}

CHILD = r"""
import gc, json, sys, time
variant, recipe, model, steps, size, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
from diffquant.bench.measure import Sampler, proc_status, weight_file_rss_mib
from diffquant.bench.phases import import_for, take_baseline, warm_runtime
from diffquant.components import resolve_model
from diffquant.file_pages import trim_heap
from diffquant.recipes import load_recipe
import diffquant.memory
if variant == "unfixed":  # torch.compile as a user calls it: no options for quantized weights
    diffquant.memory.CPU_QUANTIZED_WEIGHT_OPTIONS.clear()
import_for(load_recipe(recipe), resolve_model(model))
warm_runtime()
gc.collect(); trim_heap()
base = take_baseline(proc_status, weight_file_rss_mib)
from diffquant.pipeline import generate, load_pipeline
def call():
    started = time.perf_counter()
    generate(pipe, "a red circle on a white background", seed=0, steps=steps, height=size, width=size)
    return time.perf_counter() - started
model_mib = lambda peaks: peaks.anon_plus_files_mib - base.rss_anon_mib - base.weight_files_mib
with Sampler(weight_files=weight_file_rss_mib) as sampler:
    sampler.phase("load")
    pipe = load_pipeline(model, recipe, device="cpu")
    sampler.phase("first")
    first = call()
    sampler.phase("steady")
    steady = [call() for _ in range(calls)]
    out = {"load": model_mib(sampler.peak("load")), "first_peak": model_mib(sampler.peak("first")),
           "steady_peak": model_mib(sampler.peak("steady")), "first_s": first, "steady_s": steady}
print("RESULT " + json.dumps(out))
"""


def run_variant(variant: str, model: str, steps: int, size: int, calls: int) -> dict[str, object] | str:
    with tempfile.TemporaryDirectory() as cache:  # a first compile, as a user's first run
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        proc = subprocess.run([sys.executable, "-c", CHILD, variant, VARIANTS[variant], model, str(steps),
                               str(size), str(calls)], env=env, capture_output=True, text=True, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return "failed: " + " ".join((proc.stderr.strip().splitlines() or ["(no output)"])[-1:])
    return json.loads(line[len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="zoo:flux-dev-slice")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--calls", type=int, default=5, help="steady calls after the first")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    results = {v: run_variant(v, args.model, args.steps, args.size, args.calls) for v in variants}
    print(f"{args.model}, {args.steps} steps at {args.size}x{args.size}; model memory in MiB "
          "(anonymous + weight-file pages above the baseline)")
    print(f"{'variant':10} {'recipe':58} {'load peak':>9} {'first-call peak':>16} {'steady peak':>12} "
          f"{'first s':>8} {'steady p50 s':>13}")
    for variant, r in results.items():
        if isinstance(r, str):
            print(f"{variant:10} {VARIANTS[variant]:58} {r}")
            continue
        p50 = statistics.median(r["steady_s"]) if r["steady_s"] else float("nan")  # type: ignore[arg-type]
        r["steady_p50_s"] = p50
        print(f"{variant:10} {VARIANTS[variant]:58} {r['load']:9.1f} {r['first_peak']:16.1f} "
              f"{r['steady_peak']:12.1f} {r['first_s']:8.2f} {p50:13.3f}")
    pair = [results.get(v) for v in ("unfixed", "fixed")]
    if all(isinstance(r, dict) for r in pair):
        before, after = pair
        print(f"\nfixed / unfixed: peak {max(after['first_peak'], after['steady_peak']) / max(before['first_peak'], before['steady_peak']):.2f}x, "  # type: ignore[index]
              f"steady p50 {after['steady_p50_s'] / before['steady_p50_s']:.2f}x")  # type: ignore[index]
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"model": args.model, "steps": args.steps, "size": args.size, "results": results}, handle, indent=1)
    return 0 if all(isinstance(r, dict) for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
