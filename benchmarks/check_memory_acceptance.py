"""Issue 10's memory checks, read from a results database (no model is run here):

- every quantized recipe's generation peak of model memory (``gen.model_peak_rss_mib``) is at
  most bf16's, and at most ``--four-bit-max`` (0.7) of it for 4-bit recipes;
- after loading, each quantized component keeps at most ``--resident-max`` (5%) of its bf16
  weight file resident (``load.rss_weight_files_mib.<component>`` / ``disk.<component>.weight_file_bytes``);
- a run marked contended (``host.contended``) is listed: its times are not to be trusted.

    python benchmarks/bench_recipes_cpu.py --db out/cpu.db --force      # idle machine, first run:
    python benchmarks/check_memory_acceptance.py out/cpu.db               # add --no-quant-cache runs
    diffquant bench zoo:shapes --recipes bnb-nf4 --no-quant-cache --db out/shapes.db
    python benchmarks/check_memory_acceptance.py out/shapes.db --max-ratio bnb-nf4=0.6

Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MIB = 1024 * 1024
FOUR_BIT = ("nf4", "fp4", "int4", "q4_", "q3_", "q2_", "intx4")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("db", type=Path)
    parser.add_argument("--reference", default="bf16")
    parser.add_argument("--four-bit-max", type=float, default=0.7)
    parser.add_argument("--resident-max", type=float, default=0.05)
    parser.add_argument("--max-ratio", action="append", default=[], metavar="RECIPE=R",
                        help="a stricter peak ratio for one recipe (e.g. bnb-nf4=0.6 on zoo:shapes)")
    args = parser.parse_args(argv)
    from diffquant.store import ResultsDB

    limits = {k: float(v) for k, v in (item.split("=", 1) for item in args.max_ratio)}
    failures = 0
    with ResultsDB(args.db) as db:
        runs = db.runs()
    refs = {r.sweep_id: r for r in runs if r.ok and r.recipe == args.reference}
    for run in runs:
        if not run.ok or run.recipe == args.reference or run.sweep_id not in refs:
            continue
        ref = refs[run.sweep_id]
        mine, theirs = run.metrics.get("gen.model_peak_rss_mib"), ref.metrics.get("gen.model_peak_rss_mib")
        if not isinstance(mine, (int, float)) or not isinstance(theirs, (int, float)) or theirs <= 0:
            print(f"?  {run.recipe}: no gen.model_peak_rss_mib (recorded before the model counters?)")
            failures += 1
            continue
        ratio = mine / theirs
        limit = limits.get(run.recipe, args.four_bit_max if any(t in run.recipe for t in FOUR_BIT) else 1.0)
        ok = ratio <= limit
        resident = []
        for key, value in run.metrics.items():
            if key.startswith("load.rss_weight_files_mib.") and isinstance(value, (int, float)):
                component = key.rsplit(".", 1)[1]
                size = run.metrics.get(f"disk.{component}.weight_file_bytes")
                if component in _quantized(run) and size:
                    frac = value * MIB / float(size)
                    resident.append(f"{component} {frac:.1%}")
                    ok = ok and frac <= args.resident_max
        flag = " (contended: re-run for times)" if run.metrics.get("host.contended") else ""
        cache = " (quant-cache hit)" if run.metrics.get("load.quant_cache_used") else ""
        print(f"{'ok' if ok else 'FAIL':4} {run.model} {run.recipe}: model peak {mine:.0f} MiB = {ratio:.2f}x "
              f"{args.reference} (limit {limit:.2f}); resident bf16 file: {', '.join(resident) or '-'}{cache}{flag}")
        failures += not ok
    return 1 if failures else 0


def _quantized(run: object) -> list[str]:
    """Components whose weights hold quantized tensors (``weights.<c>.quantized_tensors`` > 0)."""
    metrics = getattr(run, "metrics", {})
    return [k.split(".")[1] for k, v in metrics.items()
            if k.startswith("weights.") and k.endswith(".quantized_tensors") and isinstance(v, (int, float)) and v > 0]


if __name__ == "__main__":
    sys.exit(main())
