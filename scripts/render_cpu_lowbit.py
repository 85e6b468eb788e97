"""Render docs/data/cpu_lowbit.json (written by benchmarks/bench_cpu_lowbit.py) as Markdown tables.

    python scripts/render_cpu_lowbit.py [docs/data/cpu_lowbit.json]

Every ratio is against bf16 measured in the same run; times are medians with bootstrap 95% CIs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DEFAULT = Path(__file__).resolve().parents[1] / "docs" / "data" / "cpu_lowbit.json"


def _ms(cell: dict[str, Any]) -> str:
    return f"{cell['median'] * 1e3:.1f} [{cell['ci_low'] * 1e3:.1f}, {cell['ci_high'] * 1e3:.1f}]"


def layers_table(rows: list[dict[str, Any]]) -> list[str]:
    types = sorted({r["type"] for r in rows if r["what"] == "cpu_kernel"})
    head = " | ".join(f"{t} kernel (×bf16) | {t} diffusers (×bf16)" for t in types)
    out = [f"| layer (in×out) | tokens | bf16 GEMM ms | {head} |", "|---|---|---|" + "---|---|" * len(types)]
    cells = {(tuple(r["shape"]), r["tokens"], r["type"], r["what"]): r for r in rows}
    for shape, tokens in sorted({(tuple(r["shape"]), r["tokens"]) for r in rows if r["what"] == "gemm"}):
        base = cells[(shape, tokens, "bf16", "gemm")]
        line = f"| {shape[0]}×{shape[1]} | {tokens} | {_ms(base)} |"
        for t in types:
            for what in ("cpu_kernel", "diffusers"):
                r = cells.get((shape, tokens, t, what))
                line += f" {r['median'] / base['median']:.2f}× |" if r else " - |"
        out.append(line)
    out += ["", "| layer (in×out) | " + " | ".join(f"{t} dequant ms (GB/s written)" for t in types) + " |",
            "|---|" + "---|" * len(types)]
    for shape in sorted({tuple(r["shape"]) for r in rows}):
        line = f"| {shape[0]}×{shape[1]} |"
        for t in types:
            r = cells.get((shape, 0, t, "dequant"))
            line += f" {_ms(r)} ({2 * shape[0] * shape[1] / r['median'] / 1e9:.1f}) |" if r else " - |"
        out.append(line)
    return out


# Bits per weight of each GGUF block format (ggml's block sizes): the floor its blocks can reach.
FORMAT_BITS = {"q2_k": 2.625, "q3_k": 3.4375, "q4_k": 4.5, "q5_k": 5.5, "q6_k": 6.5625, "q8_0": 8.5,
               "q4_0": 4.5, "q4_1": 5.0, "q5_0": 5.5, "q5_1": 6.0}


def quantized_over_floor(r: dict[str, Any], ref: dict[str, Any] | None) -> str:
    """The quantized tensors' bytes over their format's floor: the transformer's bytes less its
    unquantized tensors (held in bf16, as in the bf16 row), over quantized params × the format's bits."""
    qtype = r["recipe"].removeprefix("gguf-").split("(")[0]
    bits, params = FORMAT_BITS.get(qtype), r.get("quantized_params")
    if not (bits and params and ref):
        return "-"
    kept_bytes = ref["weight_bytes"] - 2 * params  # the same tensors, unquantized, in bf16
    return f"{(r['weight_bytes'] - kept_bytes) / (params * bits / 8):.2f}×"


def pipeline_table(rows: list[dict[str, Any]]) -> list[str]:
    out = [("| recipe | size | call s, median [95% CI] | ×bf16 | denoiser s/step | transformer weights MiB "
            "| quantized tensors ×format floor | generation peak RSS MiB (×bf16) | host load before/after |"),
           "|---|---|---|---|---|---|---|---|---|"]
    for size in sorted({r["size"] for r in rows}):
        ref = next((r for r in rows if r["size"] == size and r["recipe"] == "bf16" and "call_s" in r), None)
        for r in (r for r in rows if r["size"] == size):
            load = "/".join(f"{v:.1f}" for v in r.get("loadavg_1m", []))
            if "call_s" not in r:
                out.append(f"| {r['recipe']} | {size} | error: {r.get('error', '?')} | | | | | | {load} |")
                continue
            c = r["call_s"]
            ratio = f"{c['median'] / ref['call_s']['median']:.2f}×" if ref else "-"
            peak = f"{r['gen_peak_rss_mib']:.0f}" + (f" ({r['gen_peak_rss_mib'] / ref['gen_peak_rss_mib']:.2f}×)"
                                                     if ref else "")
            out.append(f"| {r['recipe']} | {size} | {c['median']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}] | "
                       f"{ratio} | {r['denoise_step_s']['median']:.2f} | {r['weight_bytes'] / 2**20:.0f} | "
                       f"{quantized_over_floor(r, ref)} | {peak} | {load} |")
    return out


def render(data: dict[str, Any]) -> str:
    host = data.get("host_before", {})
    lines = [(f"Machine: {host.get('cpu')}, {host.get('cores')} cores, torch {host.get('torch')} with "
             f"{host.get('torch_threads')} threads, ISA {', '.join(host.get('isa', []))}; host load "
             f"{host.get('loadavg_1m', 0):.1f} before, {data.get('loadavg_1m_end', 0):.1f} after; "
             f"{data.get('repeats')} samples per figure; started {data.get('started')}."), ""]
    if data.get("layers"):
        lines += ["### Per layer", ""] + layers_table(data["layers"]) + [""]
    if data.get("pipeline"):
        lines += [f"### Whole pipeline ({data.get('model')}, {data.get('steps')} steps)", ""]
        lines += pipeline_table(data["pipeline"]) + [""]
    if data.get("sdcpp"):
        s = data["sdcpp"]
        lines += ["### stable-diffusion.cpp", ""]
        if s.get("status") == "ok":
            c = s["call_s"]
            lines.append(f"Call: {c['median']:.2f} s [{c['ci_low']:.2f}, {c['ci_high']:.2f}] at {s['size']}², "
                         f"{s['steps']} steps.")
            if s.get("denoise_step_s"):
                d = s["denoise_step_s"]
                lines.append(f"Denoiser step: {d['median']:.2f} s [{d['ci_low']:.2f}, {d['ci_high']:.2f}].")
        elif s.get("attempts"):
            lines += sdcpp_table(s["attempts"])
        else:
            lines.append(f"{s.get('status')}: {s.get('error', '')}")
            lines += ["", "```", *s.get("log_tail", []), "```"] if s.get("log_tail") else []
    return "\n".join(lines)


def sdcpp_table(attempts: list[dict[str, Any]]) -> list[str]:
    """One row per sd.cpp attempt: the files given, how it ended, what its log said."""
    out = ["| attempt | files given | ended | sd.cpp's log: why | sd.cpp's log: what it loaded |", "|---|---|---|---|---|"]
    for a in attempts:
        files = ", ".join(f"{k.removesuffix('_path')}" for k in a.get("files", {}))
        ended = "ok" if a.get("returncode") == 0 else f"exit {a.get('returncode')}" + (
            f" ({a['signal']})" if a.get("signal") else "")
        why = "<br>".join(f"`{_log_text(e)}`" for e in a.get("errors", [])) or "-"
        if a.get("unknown_tensors"):
            why += f"<br>({a['unknown_tensors']} 'unknown tensor' warnings)"
        loaded = "<br>".join(f"`{_log_text(e)}`" for e in a.get("loaded", [])) or "-"
        out.append(f"| {a['attempt']} | {files} | {ended} | {why} | {loaded} |")
    return out


def _log_text(line: str) -> str:
    """A log line without its source location, safe in a table cell."""
    return " ".join(line.split(" - ", 1)[-1].split()).replace("|", "/")


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else DEFAULT
    if not path.is_file():
        print(f"{path} does not exist; run benchmarks/bench_cpu_lowbit.py first", file=sys.stderr)
        return 1
    print(render(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
