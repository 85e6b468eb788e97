"""``diffquant plan zoo:flux-dev-random --device cuda`` (FLUX.1-dev's configs; nothing is built or
loaded) against the seed's "memory after loading" table, row by row.

The seed's "GB" are GiB (its bf16 31.447 "GB" is FLUX.1-dev's 33.7e9 bytes of weights). The plan's
figure compared is the weights resident on the GPU once loaded (exact bytes; no CUDA context, which
torch's counters leave out too). Rows more than 10% apart carry the reason.

    python benchmarks/plan_vs_seed.py                      # print the table, write docs/data/plan_vs_seed.json
    python benchmarks/plan_vs_seed.py --update-doc docs/plan.md   # also render the table into the doc

Runs in seconds on any machine (configs only); needs no GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from diffquant.atomic import write_text_atomic

GIB = 2**30
# The seed's "Memory after loading" (GiB), in its order.
SEED = {
    "bf16": 31.447, "bnb-nf4": 12.584, "bnb-int8": 19.273, "torchao-int4wo": 10.635, "torchao-int8wo": 17.020,
    "torchao-fp8wo": 17.016, "quanto-int4": 12.254, "quanto-int8": 17.330, "quanto-fp8": 16.395,
    "gguf-q2_k": 13.264, "gguf-q4_1": 16.838, "gguf-q8_0": 21.502, "fp8-layerwise": 23.682,
    "bnb-nf4+offload-model": 12.383, "fp8-layerwise+offload-group-leaf(stream)": 9.264,
}
TOLERANCE = 0.10
START, END = "<!-- plan_vs_seed:start -->", "<!-- plan_vs_seed:end -->"
QUANTIZE_ON_LOAD = ("bnb", "torchao", "quanto")


def explain(recipe: str, plan: dict, diff: float) -> str:
    """Why a row differs by more than the tolerance (from the plan's own components where possible)."""
    if abs(diff) <= TOLERANCE:
        return ""
    comps = plan["components"]
    if "offload-group" in recipe:
        others = sum(c["stored_bytes"] for n, c in comps.items() if n != "transformer") / GIB
        return (f"the seed group-offloaded the transformer only; the other components stayed on the GPU in bf16: "
                f"{others:.3f} GiB by the plan's own bytes (plan offloads every component)")
    if "offload-model" in recipe:
        quantized = sum(c["stored_bytes"] for c in comps.values() if c["quant"]) / GIB
        return ("with today's libraries model offload leaves nothing on the GPU after loading; the seed's "
                "diffusers could not move bitsandbytes-quantized modules with .to() (transformers <= 4.44), "
                f"so its transformer and T5 stayed resident: {quantized:.3f} GiB by the plan's bytes, plus the "
                "allocator reserve of the bnb-nf4 row (below)")
    if recipe.split("-")[0] in QUANTIZE_ON_LOAD:
        return ("most likely the allocator's reserve: the seed measured torch.cuda.max_memory_reserved() after "
                "loading, and these backends quantize on the GPU while loading (bf16 tensors copied in, "
                "converted, freed), which the caching allocator keeps reserved; the plan counts the stored "
                "tensors (what memory_allocated() holds). The GGUF and layerwise rows, which do not quantize "
                "on the GPU, agree within 4%. To confirm on a GPU: load.cuda_allocated_mib vs "
                "load.cuda_max_reserved_mib from benchmarks/bench_flux_dev_cuda.py")
    return "not explained yet: measure load.cuda_allocated_mib vs load.cuda_max_reserved_mib on a GPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/data/plan_vs_seed.json"))
    parser.add_argument("--update-doc", type=Path, default=None, help="render the table into this Markdown file")
    args = parser.parse_args(argv)

    from diffquant.plan import plan_model

    plan = plan_model("zoo:flux-dev-random", list(SEED), device="cuda")
    rows = []
    for r in plan.recipes:
        data = r.to_dict()
        mem = data["memory"]
        seed = SEED[r.recipe]
        predicted = mem["resident_weights_bytes"] / GIB
        weights = mem["weights_bytes"] / GIB
        diff = predicted / seed - 1
        rows.append({"recipe": r.recipe, "seed_gib": seed, "plan_resident_gib": round(predicted, 3),
                     "plan_weights_gib": round(weights, 3), "plan_peak_gib": round(mem["peak_bytes"] / GIB, 3),
                     "diff": round(diff, 4), "within_10pct": abs(diff) <= TOLERANCE,
                     "why": explain(r.recipe, data, diff),
                     "components_gib": {n: round(c["stored_bytes"] / GIB, 3) for n, c in data["components"].items()}})
    out = {"schema": "diffquant.plan_vs_seed/1", "model": "zoo:flux-dev-random (FLUX.1-dev configs)",
           "device": "cuda", "unit": "GiB", "compared": "plan resident weights after loading vs the seed's "
           "'memory after loading' (torch.cuda.max_memory_reserved, GiB)", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(out, indent=2) + "\n")
    table = render(rows)
    print(table)
    if args.update_doc:
        text = args.update_doc.read_text()
        head, _, rest = text.partition(START)
        _, _, tail = rest.partition(END)
        marker = ("<!-- table:plan_vs_seed source=docs/data/plan_vs_seed.json view=script "
                  "script=benchmarks/plan_vs_seed.py arg=rows -->")
        args.update_doc.write_text(f"{head}{START}\n{marker}\n{table}\n<!-- /table -->\n{END}{tail}")
    return 0


def render(rows: list[dict]) -> str:
    lines = ["| recipe | seed (GiB) | plan: resident after loading (GiB) | plan: all weights (GiB) | difference | why |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['seed_gib']:.3f} | {r['plan_resident_gib']:.3f} | "
                     f"{r['plan_weights_gib']:.3f} | {r['diff']:+.1%} | {r['why']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
