"""Issue 10's memory checks, read from a results database or a committed data file
(``docs/data/*.json``, written by ``diffquant results --format json``); no model is run here.
One line per recipe and bar, ``ok`` / ``FAIL``:

- ``peak<=ref``: the generation peak of the model's own memory (``gen.model_peak_rss_mib``) is at
  most the reference's (bf16) in the same sweep;
- ``peak<=0.7x``: for 4-bit recipes, at most ``--four-bit-max`` (0.7) of it (``--max-ratio
  RECIPE=R`` sets a stricter bar for one recipe, e.g. bnb-nf4=0.6 on zoo:shapes);
- ``resident<=5%``: after loading, each quantized component keeps at most ``--resident-max`` (5%)
  of its bf16 weight file resident (``load.rss_weight_files_mib.<component>`` /
  ``disk.<component>.weight_file_bytes``).

Each line also shows the runtime residue left out of the peak (``gen.runtime_residue_mib``), the
peak before that subtraction, whether the quantized weights came from the cache (a cache hit is
not a first run) and whether the run was contended (its times are not to be trusted).

    python benchmarks/check_memory_acceptance.py docs/data/recipes_cpu_flux_dev_slice.json
    python benchmarks/bench_recipes_cpu.py --db out/cpu.db --force      # idle machine
    python benchmarks/check_memory_acceptance.py out/cpu.db
    diffquant bench zoo:shapes --recipes bf16,bnb-nf4 --no-quant-cache --db out/shapes.db
    python benchmarks/check_memory_acceptance.py out/shapes.db --max-ratio bnb-nf4=0.6

Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
FOUR_BIT = ("nf4", "fp4", "int4", "q4_", "q3_", "q2_", "intx4")


@dataclass(frozen=True)
class Run:
    model: str
    recipe: str
    sweep_id: str
    ok: bool
    metrics: dict[str, Any]


def read_runs(path: Path) -> list[Run]:
    """Runs from a results database, or from a JSON export (a list, or ``{"runs": [...]}``)."""
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data["runs"] if isinstance(data, dict) else data
        return [Run(r["model"], r["recipe"], r["sweep_id"], r.get("status") == "ok", r.get("metrics") or {})
                for r in rows]
    from diffquant.store import ResultsDB

    with ResultsDB(path) as db:
        return [Run(r.model, r.recipe, r.sweep_id, r.ok, r.metrics) for r in db.runs()]


def check(runs: list[Run], reference: str, four_bit_max: float, resident_max: float,
          limits: dict[str, float]) -> tuple[list[str], int]:
    """The report's lines and the number of failed bars."""
    lines: list[str] = []
    failures = 0
    refs = {r.sweep_id: r for r in runs if r.ok and r.recipe == reference}
    for run in runs:
        if not run.ok or run.recipe == reference or run.sweep_id not in refs:
            continue
        m, ref = run.metrics, refs[run.sweep_id].metrics
        mine, theirs = m.get("gen.model_peak_rss_mib"), ref.get("gen.model_peak_rss_mib")
        head = f"{run.model} {run.recipe}"
        notes = []
        if m.get("load.quant_cache_used"):
            notes.append("quant-cache hit: not a first run")
        if m.get("host.contended"):
            notes.append("contended: re-run for times")
        if not isinstance(mine, (int, float)) or not isinstance(theirs, (int, float)) or theirs <= 0:
            lines.append(f"?    {head}: no gen.model_peak_rss_mib (recorded before the model counters?)")
            failures += 1
            continue
        ratio = mine / theirs
        residue = m.get("gen.runtime_residue_mib")
        extra = (f"; runtime residue left out {residue:.0f} MiB (bf16's {ref.get('gen.runtime_residue_mib') or 0:.0f}), "
                 f"before it {m.get('gen.peak_above_baseline_rss_mib') or 0:.0f} MiB"
                 if isinstance(residue, (int, float)) else "; no runtime residue recorded")
        bars = [("peak<=ref", ratio <= 1.0, f"{mine:.0f} MiB = {ratio:.2f}x {reference} ({theirs:.0f} MiB){extra}")]
        limit = limits.get(run.recipe, four_bit_max if any(t in run.recipe for t in FOUR_BIT) else None)
        if limit is not None:
            bars.append((f"peak<={limit:g}x", ratio <= limit, f"{ratio:.2f}x"))
        for component in _quantized(m):
            size = m.get(f"disk.{component}.weight_file_bytes")
            value = m.get(f"load.rss_weight_files_mib.{component}")
            if isinstance(size, (int, float)) and size and isinstance(value, (int, float)):
                frac = value * MIB / float(size)
                bars.append((f"resident<={resident_max:.0%}", frac <= resident_max,
                             f"{component} keeps {frac:.1%} of its weight file"))
        for name, ok, text in bars:
            lines.append(f"{'ok' if ok else 'FAIL':4} {head} {name}: {text}"
                         + (f" ({'; '.join(notes)})" if notes else ""))
            failures += not ok
    return lines, failures


def _quantized(metrics: dict[str, Any]) -> list[str]:
    """Components whose weights hold quantized tensors (``weights.<c>.quantized_tensors`` > 0)."""
    return [k.split(".")[1] for k, v in metrics.items()
            if k.startswith("weights.") and k.endswith(".quantized_tensors") and isinstance(v, (int, float)) and v > 0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="results database, or a JSON export / docs/data file")
    parser.add_argument("--reference", default="bf16")
    parser.add_argument("--four-bit-max", type=float, default=0.7)
    parser.add_argument("--resident-max", type=float, default=0.05)
    parser.add_argument("--max-ratio", action="append", default=[], metavar="RECIPE=R",
                        help="a stricter peak ratio for one recipe (e.g. bnb-nf4=0.6 on zoo:shapes)")
    args = parser.parse_args(argv)
    limits = {k: float(v) for k, v in (item.split("=", 1) for item in args.max_ratio)}
    lines, failures = check(read_runs(args.source), args.reference, args.four_bit_max, args.resident_max, limits)
    print("\n".join(lines) if lines else "no run to check (no reference run in any sweep?)")
    print(f"{failures} bar(s) failed" if failures else "every bar holds")
    return 1 if failures or not lines else 0


if __name__ == "__main__":
    sys.exit(main())
