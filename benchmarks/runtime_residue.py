"""What the "~20 MiB per call, the same for every recipe" is: the worker's runtime residue, taken
apart (docs/bench.md, *Why the runtime residue is subtracted*). No timing: memory only, so a busy
machine gives the same figures.

For each recipe and each cache setting, a fresh interpreter imports what the worker imports, warms
the runtime, trims the heap, takes the baseline, loads, makes ``--calls`` images and prints
anonymous RSS above the baseline: after loading, after each call (and after ``malloc_trim``), and
once the pipeline has been deleted (the residue). The cache settings:

- ``default``: as a user's process runs;
- ``no-onednn-cache``: ``ONEDNN_PRIMITIVE_CACHE_CAPACITY=0`` (oneDNN's primitive cache off);
- ``no-caches``: that and ``LRU_CACHE_CAPACITY=1`` (ideep's LRU cache of matmul/conv primitives).

If the residue falls to ~0 without the caches, while memory after a call returns to memory after
loading, the per-call memory was those caches, not activations.

    python benchmarks/runtime_residue.py                         # zoo:shapes, bf16 and bnb-nf4
    python benchmarks/runtime_residue.py --model zoo:flux-dev-slice --recipes quanto-int4 --size 256 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SETTINGS = {"default": {}, "no-onednn-cache": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"},
            "no-caches": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0", "LRU_CACHE_CAPACITY": "1"}}

CHILD = r"""
import gc, json, sys, weakref
model, recipe, steps, size, calls = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
from diffquant.bench.measure import proc_status, weight_file_rss_mib
from diffquant.bench.phases import import_for, runtime_residue, take_baseline, warm_runtime
from diffquant.components import resolve_model
from diffquant.file_pages import trim_heap
from diffquant.recipes import load_recipe
import_for(load_recipe(recipe), resolve_model(model))
warm_runtime()
gc.collect(); trim_heap()
base = take_baseline(proc_status, weight_file_rss_mib)
anon = lambda: proc_status()["rss_anon"] - base.rss_anon_mib
from diffquant.pipeline import generate, load_pipeline
out = {"after_load": anon(), "after_call": [], "after_call_trimmed": []}
holder = [load_pipeline(model, recipe, device="cpu")]
for _ in range(calls):
    generate(holder[0], "a red circle on a white background", seed=0, steps=steps, height=size, width=size)
    out["after_call"].append(anon())
    gc.collect(); trim_heap()
    out["after_call_trimmed"].append(anon())
alive = weakref.ref(holder[0])
def drop():
    holder.clear(); gc.collect(); return alive() is None
out["residue"] = runtime_residue(drop, lambda: proc_status()["rss_anon"], base)
print("RESULT " + json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="zoo:shapes")
    parser.add_argument("--recipes", default="bf16,bnb-nf4")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args(argv)
    print("anonymous RSS above the baseline, MiB: after loading | after each call (after malloc_trim) | "
          "residue once the pipeline is deleted")
    for recipe in args.recipes.split(","):
        for name in args.settings.split(","):
            env = {**os.environ, **SETTINGS[name]}
            proc = subprocess.run([sys.executable, "-c", CHILD, args.model, recipe, str(args.steps), str(args.size),
                                   str(args.calls)], env=env, capture_output=True, text=True, check=False)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{recipe:12} {name:16} failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(line[len("RESULT "):])
            calls = " ".join(f"{a:.1f} ({b:.1f})" for a, b in zip(r["after_call"], r["after_call_trimmed"]))
            residue = "-" if r["residue"] is None else f"{r['residue']:.1f}"
            print(f"{recipe:12} {name:16} load {r['after_load']:.1f} | calls {calls} | residue {residue}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
