"""The backends and options added with issue 14, on this machine's CPU: SDNQ (each type with and
without its quantized matmul), torchao's grouped int8, and compile(regional) against a full compile.

Per model and recipe, each in a fresh worker process: the denoiser's stored bytes (and the large
text encoder's), load time, the first call (which pays any compilation), the steady call latency
(median of ``--repeats``) as a ratio to bf16 measured in the same run, and the PSNR of the images
against bf16's (same prompts and seeds). Recipes refused here (ModelOpt, torchao NVFP4/MXFP8 on a
CPU) are recorded with their reason without starting a worker.

    python benchmarks/bench_new_backends.py                     # flux-dev-slice and shapes, ~an hour on 2 cores
    python benchmarks/bench_new_backends.py --quick             # the same recipes and models, ~10-15 minutes (estimated)
    python benchmarks/bench_new_backends.py --models zoo:tiny-flux --recipes bf16,sdnq-int8 --steps 1 --no-data

``--quick`` keeps every recipe, both models and the compile comparison (so it still answers every
question of the docs' tables) and cuts the calls: one prompt, three steady calls after the first
(the median of three), zoo:flux-dev-slice at 2 denoising steps instead of 4 (zoo:shapes keeps its
own 12 steps at 64x64: its calls are cheap and fewer steps would draw no shapes). Its figures are
noisier than the full run's; the file records which preset made it (``settings.preset``).

Not a test. Run it alone on an idle machine: the file records the host's load average and
``host_load.contended`` when it exceeded the cores. Writes ``docs/data/new_backends.json``
(``--data``). SDNQ compiles its dequantize step with torch.compile unless SDNQ_USE_TORCH_COMPILE=0
(recorded in the file); its first call carries that compile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "docs" / "data" / "new_backends.json"
MODELS = ("zoo:flux-dev-slice", "zoo:shapes")
RECIPES = ("bf16", "sdnq-int8", "sdnq-int8(matmul)", "sdnq-uint4", "sdnq-uint4(matmul)", "sdnq-int4",
           "sdnq-int4(matmul)", "sdnq-int6", "sdnq-int6(matmul)", "sdnq-fp8", "sdnq-fp8(matmul)", "sdnq-fp6",
           "sdnq-fp4", "torchao-int8wo", "torchao-int8wo(group_size=128)",
           "modelopt-fp8", "modelopt-int8", "modelopt-int4", "modelopt-nvfp4", "torchao-nvfp4", "torchao-mxfp8")
# Full against regional compilation, on the first model only (FLUX blocks are what regions repeat).
COMPILE_RECIPES = ("bf16+compile", "bf16+compile(regional)")
# --quick: fewer calls, same coverage (see the module docstring).
QUICK = {"prompts": 1, "repeats": 3, "steps": {"zoo:flux-dev-slice": 2}}
PROMPTS = ("a red circle at the top left of a blue square", "two green triangles on a white background",
           "a yellow star above a black line")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--recipes", default=",".join(RECIPES), help="';'- or ','-separated; bf16 is always run")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile(regional) comparison")
    parser.add_argument("--quick", action="store_true",
                        help="every recipe and model, fewer calls: 1 prompt, 3 steady calls, flux-dev-slice at "
                             "2 steps (an estimated 10-15 minutes on 2 idle cores instead of ~an hour)")
    parser.add_argument("--steps", type=int, default=None, help="default: each model's own (--quick: see above)")
    parser.add_argument("--prompts", type=int, default=2, help=f"how many of {len(PROMPTS)} fixed prompts")
    parser.add_argument("--repeats", type=int, default=3, help="steady calls per prompt after the first")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per worker")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--no-data", action="store_true", help="print only (a trial run)")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "RECIPE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.repeats = QUICK["prompts"], QUICK["repeats"]
    return args


def steps_for(model: str, args: argparse.Namespace) -> int | None:
    """Denoising steps for ``model``: --steps, else --quick's, else the model's own (None)."""
    if args.steps:
        return args.steps
    return QUICK["steps"].get(model) if args.quick else None


def split(text: str) -> list[str]:
    """Recipes separated by ';' or by commas outside parentheses (options use commas too)."""
    items, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch in ",;" and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += ch
    return [i for i in [*items, current.strip()] if i]


# --- worker: one model and recipe in this process ------------------------------------------------

def worker(model: str, recipe: str, out: Path, steps: int | None, prompts: int, repeats: int) -> None:
    import numpy as np

    from diffquant import load_pipeline
    from diffquant.components import denoiser_name, large_text_encoder_name, read_components
    from diffquant.inspect import component_stats
    from diffquant.pipeline import generate

    started = time.perf_counter()
    pipe = load_pipeline(model, recipe, device="cpu")
    load_s = time.perf_counter() - started
    stats = component_stats(pipe)
    info = pipe._diffquant_load_info
    components = read_components(info.model_dir)
    denoiser, text = denoiser_name(components), large_text_encoder_name(components)
    images, first_calls, steady = [], [], []
    for i, prompt in enumerate(PROMPTS[:prompts]):
        for call in range(1 + repeats):
            t0 = time.perf_counter()
            result = generate(pipe, prompt, seed=i, steps=steps)
            (first_calls if call == 0 else steady).append(time.perf_counter() - t0)
        images.append(np.asarray(result.image))
    np.save(out.with_suffix(".npy"), np.stack(images))
    out.write_text(json.dumps({
        "load_s": load_s, "first_call_s": first_calls[0], "first_calls_s": first_calls,
        "call_s_p50": statistics.median(steady) if steady else None, "calls": len(steady),
        "denoiser_bytes": stats[denoiser].weight_bytes,
        "text_encoder_bytes": stats[text].weight_bytes if text else None,
        "notes": info.notes}))


# --- parent -------------------------------------------------------------------------------------

def run_one(model: str, recipe: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from diffquant.backends import why_not_here
    from diffquant.recipes import parse_recipe

    row: dict[str, Any] = {"recipe": recipe}
    reason = why_not_here(parse_recipe(recipe), "cpu")
    if reason:
        return {**row, "ok": False, "refused": reason}
    out = tmp / f"{abs(hash((model, recipe)))}.json"
    cmd = [sys.executable, __file__, "--worker", model, recipe, str(out), "--prompts", str(args.prompts),
           "--repeats", str(args.repeats)]
    steps = steps_for(model, args)
    cmd += ["--steps", str(steps)] if steps else []
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=args.timeout)
    row["worker_wall_s"] = round(time.perf_counter() - t0, 2)
    if proc.returncode != 0 or not out.is_file():
        return {**row, "ok": False, "error": (proc.stderr or proc.stdout)[-2000:]}
    import numpy as np

    row |= {"ok": True, **json.loads(out.read_text())}
    row["_images"] = np.load(out.with_suffix(".npy"))
    return row


def psnr(a: Any, b: Any) -> float:
    import numpy as np

    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def compare(rows: list[dict[str, Any]]) -> None:
    """Ratios and PSNR against the bf16 row, in place; drops the images."""
    images = {row["recipe"]: row.pop("_images", None) for row in rows}
    reference = next((r for r in rows if r["recipe"] == "bf16" and r.get("ok")), None)
    if reference is None:
        return
    ref_images = images["bf16"]
    for row in rows:
        if not row.get("ok") or row is reference:
            continue
        row["psnr_db_vs_bf16"] = round(statistics.mean(psnr(a, b) for a, b in zip(images[row["recipe"]],
                                                                                   ref_images)), 2)
        row["psnr_db_vs_bf16_min"] = round(min(psnr(a, b) for a, b in zip(images[row["recipe"]], ref_images)), 2)
        if reference.get("call_s_p50") and row.get("call_s_p50"):
            row["latency_ratio_vs_bf16"] = round(row["call_s_p50"] / reference["call_s_p50"], 3)
        row["denoiser_bytes_ratio_vs_bf16"] = round(row["denoiser_bytes"] / reference["denoiser_bytes"], 4)
        if row.get("text_encoder_bytes") and reference.get("text_encoder_bytes"):
            row["text_encoder_bytes_ratio_vs_bf16"] = round(row["text_encoder_bytes"]
                                                            / reference["text_encoder_bytes"], 4)


def measure_model(model: str, recipes: list[str], args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    rows = []
    for recipe in recipes:
        print(f"[{model}] {recipe} ...", flush=True)
        row = run_one(model, recipe, args, tmp)
        print(f"    {summary_line(row)}", flush=True)
        rows.append(row)
    compare(rows)
    return rows


def summary_line(row: dict[str, Any]) -> str:
    if not row.get("ok"):
        return "refused: " + row["refused"] if "refused" in row else "FAILED: " + row["error"].splitlines()[-1:][0]
    p50 = row.get("call_s_p50")
    return (f"load {row['load_s']:.1f} s, first call {row['first_call_s']:.1f} s, steady call "
            f"{p50 if p50 is None else round(p50, 3)} s, denoiser {row['denoiser_bytes'] / 2**20:.1f} MiB")


def compile_comparison(model: str, args: argparse.Namespace, tmp: Path, bf16: dict[str, Any] | None) -> dict[str, Any]:
    """Full vs regional compile: the first call's extra time over a steady call (the compile), and
    the steady latency, each against eager bf16."""
    out: dict[str, Any] = {"model": model}
    for recipe in COMPILE_RECIPES:
        print(f"[{model}] {recipe} ...", flush=True)
        row = run_one(model, recipe, args, tmp)
        row.pop("_images", None)
        print(f"    {summary_line(row)}", flush=True)
        if row.get("ok") and row.get("call_s_p50"):
            row["compile_s_estimate"] = round(row["first_call_s"] - row["call_s_p50"], 2)
            if bf16 and bf16.get("call_s_p50"):
                row["latency_ratio_vs_eager_bf16"] = round(row["call_s_p50"] / bf16["call_s_p50"], 3)
        out["regional" if "regional" in recipe else "full"] = row
    return out


def environment() -> dict[str, Any]:
    from diffquant.versions import library_versions

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], check=False, capture_output=True,
                            text=True).stdout.strip()
    return {"commit": commit or None, "versions": library_versions(), "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "torch_threads": _torch_threads(),
            "SDNQ_USE_TORCH_COMPILE": os.environ.get("SDNQ_USE_TORCH_COMPILE", "(unset: sdnq compiles)")}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# --- docs: tables for scripts/render_docs.py (view=script) ----------------------------------------

DOC = REPO / "docs" / "backends.md"
TABLES = ("new_backends_runs", "new_backends_refused", "new_backends_compile")
NO_FIGURES = ("No figures here yet: they come from `benchmarks/bench_new_backends.py` run on an idle machine (see\n"
              "[Measuring](#measuring)).")
FIGURES = ("The figures below come from `benchmarks/bench_new_backends.py` (docs/data/new_backends.json records\n"
           "its settings, versions and host load; see [Measuring](#measuring)).")
RESULTS = """## Results on this CPU

Per model, each recipe that runs here against bf16 in the same run: the denoiser's and the large text
encoder's stored bytes, the steady call latency (median), and the PSNR of its images against bf16's
(same prompts and seeds; mean and worst).

<!-- table:new_backends_runs source=docs/data/new_backends.json view=script script=benchmarks/bench_new_backends.py table=0 -->
<!-- /table -->

Refused before loading on this CPU, with the reason and the nearest recipe that runs:

<!-- table:new_backends_refused source=docs/data/new_backends.json view=script script=benchmarks/bench_new_backends.py table=1 -->
<!-- /table -->

`torch.compile` of the whole denoiser against `compile(regional)` (diffusers' `compile_repeated_blocks`)
on zoo:flux-dev-slice: the first call's compile time (first call minus a steady call) and the steady
latency against eager bf16:

<!-- table:new_backends_compile source=docs/data/new_backends.json view=script script=benchmarks/bench_new_backends.py table=2 -->
<!-- /table -->

"""


def _mib(value: Any) -> str:
    return "-" if value is None else f"{value / 2**20:.1f} MiB"


def _times(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}×"


def _secs(value: Any) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _cell(text: Any) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def render(data: dict[str, Any]) -> str:
    """Three Markdown tables of a data file: measured runs, refused recipes, full vs regional compile."""
    runs = [("| model | recipe | denoiser (×bf16) | text encoder (×bf16) | steady call (×bf16) "
            "| PSNR vs bf16, mean / min | first call | load |"), "|" + "---|" * 8]
    refused: dict[str, str] = {}
    for model, rows in data.get("models", {}).items():
        for row in rows:
            if "refused" in row:
                refused.setdefault(row["recipe"], row["refused"])
                continue
            if not row.get("ok"):
                error = (row.get("error") or "").strip().splitlines()[-1:] or ["?"]
                runs.append(f"| {model} | {row['recipe']} | failed: {_cell(error[0])[:100]} |" + " |" * 5)
                continue
            bf16 = row["recipe"] == "bf16"
            psnr_text = "reference" if bf16 else f"{row.get('psnr_db_vs_bf16', '-')} / {row.get('psnr_db_vs_bf16_min', '-')} dB"
            denoiser = _mib(row.get("denoiser_bytes")) + ("" if bf16 else f" ({_times(row.get('denoiser_bytes_ratio_vs_bf16'))})")
            text = _mib(row.get("text_encoder_bytes")) + (
                "" if bf16 or row.get("text_encoder_bytes_ratio_vs_bf16") is None
                else f" ({_times(row.get('text_encoder_bytes_ratio_vs_bf16'))})")
            call = _secs(row.get("call_s_p50")) + ("" if bf16 else f" ({_times(row.get('latency_ratio_vs_bf16'))})")
            runs.append(f"| {model} | {row['recipe']} | {denoiser} | {text} | {call} | {psnr_text} "
                        f"| {_secs(row.get('first_call_s'))} | {_secs(row.get('load_s'))} |")
    refused_lines = ["| recipe | why not on this CPU (and what runs instead) |", "|---|---|"]
    refused_lines += [f"| {recipe} | {_cell(reason)} |" for recipe, reason in refused.items()] or ["| - | none |"]
    compile_lines = ["| model | variant | first call | compile (first − steady) | steady call | × eager bf16 |",
                     "|---|---|---|---|---|---|"]
    comp = data.get("compile")
    if not comp:
        compile_lines.append("| - | not measured (--no-compile) | - | - | - | - |")
    else:
        eager = next((r for r in data["models"].get(comp["model"], []) if r["recipe"] == "bf16" and r.get("ok")), None)
        if eager:
            compile_lines.append(f"| {comp['model']} | eager (bf16) | {_secs(eager.get('first_call_s'))} | - "
                                 f"| {_secs(eager.get('call_s_p50'))} | 1.00× |")
        for key, name in (("full", "compile (whole denoiser)"), ("regional", "compile(regional)")):
            row = comp.get(key) or {}
            if not row.get("ok"):
                why = row.get("refused") or (row.get("error") or "not run").strip().splitlines()[-1]
                compile_lines.append(f"| {comp['model']} | {name} | {_cell(why)[:100]} | - | - | - |")
                continue
            compile_lines.append(f"| {comp['model']} | {name} | {_secs(row.get('first_call_s'))} "
                                 f"| {_secs(row.get('compile_s_estimate'))} | {_secs(row.get('call_s_p50'))} "
                                 f"| {_times(row.get('latency_ratio_vs_eager_bf16'))} |")
    return "\n\n".join("\n".join(t) for t in (runs, refused_lines, compile_lines)) + "\n"


def ensure_doc_tables(doc: Path = DOC) -> bool:
    """Give docs/backends.md its marked tables (once): a results section before "## Measuring",
    filled by ``python scripts/render_docs.py``. Returns whether the file changed."""
    text = doc.read_text(encoding="utf-8")
    if f"table:{TABLES[0]}" in text:
        return False
    if "\n## Measuring\n" not in text:
        raise SystemExit(f"{doc} has no '## Measuring' section to put the results before")
    text = text.replace(NO_FIGURES, FIGURES).replace("\n## Measuring\n", "\n" + RESULTS + "## Measuring\n", 1)
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, doc)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        model, recipe, out = args.worker
        worker(model, recipe, Path(out), args.steps, args.prompts, args.repeats)
        return 0
    recipes = split(args.recipes)
    recipes = ["bf16"] + [r for r in recipes if r != "bf16"]
    load_before = os.getloadavg()
    started = time.time()
    data: dict[str, Any] = {
        "provenance": "written by `python benchmarks/bench_new_backends.py " + " ".join(argv or sys.argv[1:]) + "`",
        "settings": {"preset": "quick" if args.quick else "full",
                     "steps": {m: steps_for(m, args) or "model default" for m in split(args.models)},
                     "prompts": list(PROMPTS[: args.prompts]),
                     "seeds": list(range(args.prompts)), "repeats": args.repeats, "device": "cpu"},
        **environment(), "models": {}}
    with tempfile.TemporaryDirectory(prefix="bench-new-backends-") as tmp:
        for i, model in enumerate(split(args.models)):
            rows = measure_model(model, recipes, args, Path(tmp))
            data["models"][model] = rows
            if i == 0 and not args.no_compile:
                bf16 = next((r for r in rows if r["recipe"] == "bf16" and r.get("ok")), None)
                data["compile"] = compile_comparison(model, args, Path(tmp), bf16)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load_after = os.getloadavg()
    data["host_load"] = {"loadavg_1m_before": round(load_before[0], 2), "loadavg_1m_after": round(load_after[0], 2),
                         "loadavg_15m_after": round(load_after[2], 2), "cpu_count": cores,
                         "contended": max(load_before[0], load_after[0], load_after[2]) > cores,
                         "wall_s": round(time.time() - started, 1)}
    if data["host_load"]["contended"]:
        print("WARNING: the host's load exceeded its cores: the latencies are not usable; re-run on an idle machine")
    if not args.no_data:
        args.data.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = args.data.with_suffix(".json.tmp")
        tmp_path.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp_path, args.data)
        print(f"wrote {args.data}")
        if args.data.resolve() == DEFAULT_DATA.resolve() and ensure_doc_tables():
            print(f"added the results tables to {DOC.relative_to(REPO)}")
        print("now run: python scripts/render_docs.py && python scripts/render_docs.py --check")
    else:
        print(json.dumps({m: [{k: v for k, v in r.items() if k != "notes"} for r in rows]
                          for m, rows in data["models"].items()}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
