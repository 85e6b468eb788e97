"""The CPU low-bit path (``gguf-*(cpu_kernel)``) against bf16 and the other low-bit recipes, on this CPU.

Three parts, each measured side by side in one run, written to one JSON file:

- ``layers``: one linear layer per FLUX.1-dev shape (in x out: 3072x3072, 3072x12288, 12288x3072,
  15360x3072) at 256/1024/4096 tokens: bf16 GEMM; for each GGUF type the kernel's dequantization
  alone, dequantization + GEMM (what a ``cpu_kernel`` layer does), and diffusers' GGUFLinear.
  Blocks are random bytes with sane fp16 scales (the kernel's speed does not depend on values).
- ``pipeline``: whole-pipeline call latency on zoo:flux-dev-slice (default 512x512; add 1024x1024
  with --sizes), every recipe in a fresh interpreter, one after another: bf16, torchao-int8wo,
  bnb-nf4, diffusers' GGUF and the cpu_kernel variants; plus the transformer's stored weight bytes
  and the generation peak RSS (VmHWM reset after loading).
- ``sdcpp``: stable-diffusion.cpp (``stable_diffusion_cpp``) on the same GGUF transformer, if the
  package is importable and can load the file; otherwise the error it gave, recorded as measured.

Every figure is the median of ``--repeats`` (>= 5) samples with a bootstrap 95% CI. Run it alone on
an idle machine (load average below the core count); the host load is recorded before and after.

    python benchmarks/bench_cpu_lowbit.py                        # all parts, 512x512, 4 steps
    python benchmarks/bench_cpu_lowbit.py --parts layers --repeats 9
    python benchmarks/bench_cpu_lowbit.py --parts pipeline --sizes 512,1024

Writes docs/data/cpu_lowbit.json (``--out``); ``python scripts/render_cpu_lowbit.py`` renders it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHAPES = ((3072, 3072), (3072, 12288), (12288, 3072), (15360, 3072))  # (in, out)
TOKENS = (256, 1024, 4096)
LAYER_TYPES = ("Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K")
# gguf-*(cpu_kernel=false): diffusers' own GGUF path (the kernel is the CPU default since it was measured faster).
PIPELINE_RECIPES = ("bf16", "torchao-int8wo", "bnb-nf4", "gguf-q8_0(cpu_kernel=false)", "gguf-q4_k(cpu_kernel=false)",
                    "gguf-q8_0(cpu_kernel)",
                    "gguf-q6_k(cpu_kernel)", "gguf-q5_k(cpu_kernel)", "gguf-q4_k(cpu_kernel)",
                    "gguf-q3_k(cpu_kernel)", "gguf-q2_k(cpu_kernel)")
PROMPT = "a photo of a red fox sitting in fresh snow, morning light"


def median_ci(values: list[float], level: float = 0.95, resamples: int = 2000) -> dict[str, Any]:
    """Median and a percentile-bootstrap CI of the median (seeded: the same samples give the same CI)."""
    import numpy as np

    arr = np.asarray(values, dtype=float)
    rng = np.random.default_rng(0)
    meds = np.median(rng.choice(arr, size=(resamples, arr.size), replace=True), axis=1)
    tail = (1 - level) / 2
    return {"median": float(np.median(arr)), "ci_low": float(np.quantile(meds, tail)),
            "ci_high": float(np.quantile(meds, 1 - tail)), "n": int(arr.size), "samples": [float(v) for v in arr]}


def host() -> dict[str, Any]:
    import torch

    flags = ""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16", "amx_int8")
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "isa": [f for f in wanted if f" {f}" in flags], "loadavg_1m": os.getloadavg()[0]}


# ---------------------------------------------------------------- layers


def random_blocks(qtype: str, n_values: int) -> Any:
    """Random GGUF blocks of ``qtype`` with finite, normal fp16 scales (0.01)."""
    import numpy as np
    import torch

    from diffquant.gguf_writer.quantize import BLOCK

    values, nbytes = BLOCK[qtype]
    scale_offsets = {"Q8_0": (0,), "Q6_K": (208,), "Q5_K": (0, 2), "Q4_K": (0, 2), "Q3_K": (108,),
                     "Q2_K": (80, 82)}[qtype]
    rng = np.random.default_rng(0)
    b = rng.integers(0, 256, (n_values // values, nbytes), dtype=np.uint8)
    for off in scale_offsets:
        b[:, off:off + 2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    return torch.from_numpy(b)


def timed(fn: Any, repeats: int) -> dict[str, Any]:
    fn()  # warm: first touch of buffers, oneDNN primitive creation
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return median_ci(samples)


def bench_layers(repeats: int, types: tuple[str, ...], tokens: tuple[int, ...],
                 shapes: tuple[tuple[int, int], ...] = SHAPES) -> list[dict[str, Any]]:
    import gguf
    import torch
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter

    from diffquant.lowbit.kernel import VARIANTS, dequantize_into, variant_supported
    from diffquant.lowbit.linear import kernel_layer_class

    rows = []
    with torch.no_grad():
        for k_in, n_out in shapes:
            w_bf16 = torch.randn(n_out, k_in, dtype=torch.bfloat16) * 0.02
            layers = {}
            for qtype in types:
                blocks = random_blocks(qtype, n_out * k_in)
                plain = GGUFLinear(k_in, n_out, bias=False, compute_dtype=torch.bfloat16)
                plain.weight = GGUFParameter(blocks.reshape(n_out, -1), quant_type=gguf.GGMLQuantizationType[qtype])
                fast = GGUFLinear(k_in, n_out, bias=False, compute_dtype=torch.bfloat16)
                fast.weight = plain.weight
                fast.__class__ = kernel_layer_class()
                layers[qtype] = (blocks.reshape(-1), plain, fast)
            scratch = torch.empty(n_out * k_in, dtype=torch.bfloat16)
            for qtype, (blocks, _, _) in layers.items():
                qid = int(gguf.GGMLQuantizationType[qtype])
                rows.append({"shape": [k_in, n_out], "tokens": 0, "type": qtype, "what": "dequant",
                             **timed(lambda b=blocks, q=qid, o=scratch: dequantize_into(b, q, o), repeats)})
                # The two AVX-512 variants side by side (the default picks avx512bf16 where the CPU has it).
                for name in ("avx512", "avx512bf16"):
                    if variant_supported(name):
                        rows.append({"shape": [k_in, n_out], "tokens": 0, "type": qtype, "what": "dequant_variant",
                                     "variant": name, **timed(lambda b=blocks, q=qid, o=scratch, v=VARIANTS[name]:
                                                              dequantize_into(b, q, o, v), repeats)})
            for t in tokens:
                x = torch.randn(t, k_in, dtype=torch.bfloat16)
                base = timed(lambda x=x, w=w_bf16: torch.nn.functional.linear(x, w), repeats)
                rows.append({"shape": [k_in, n_out], "tokens": t, "type": "bf16", "what": "gemm", **base})
                for qtype, (_, plain, fast) in layers.items():
                    rows.append({"shape": [k_in, n_out], "tokens": t, "type": qtype, "what": "cpu_kernel",
                                 **timed(lambda x=x, m=fast: m(x), repeats)})
                    rows.append({"shape": [k_in, n_out], "tokens": t, "type": qtype, "what": "diffusers",
                                 **timed(lambda x=x, m=plain: m(x), max(3, repeats // 2))})
                print(f"  layer {k_in}x{n_out} @ {t} tokens: bf16 {base['median'] * 1e3:.1f} ms", flush=True)
    return rows


# ---------------------------------------------------------------- pipeline


def _vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(recipe: str, model: str, size: int, steps: int, repeats: int) -> dict[str, Any]:
    """One recipe in this (fresh) interpreter: load, one warm call, ``repeats`` timed calls."""
    import diffquant
    from diffquant.inspect import component_stats
    from diffquant.pipeline import generate

    started = time.perf_counter()
    pipe = diffquant.load_pipeline(model, recipe, device="cpu")
    load_s = time.perf_counter() - started
    stats = component_stats(pipe)["transformer"]
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the next peak is the generation's
    first = time.perf_counter()
    generate(pipe, PROMPT, seed=0, steps=steps, height=size, width=size)
    first_s = time.perf_counter() - first
    denoiser: list[float] = []  # transformer time of the current call (sd.cpp reports the same)
    pipe.transformer.register_forward_pre_hook(lambda *_: denoiser.append(-time.perf_counter()))
    pipe.transformer.register_forward_hook(lambda *_: denoiser.append(denoiser.pop() + time.perf_counter()))
    calls, per_step = [], []
    for _ in range(repeats):
        denoiser.clear()
        t = time.perf_counter()
        generate(pipe, PROMPT, seed=0, steps=steps, height=size, width=size)
        calls.append(time.perf_counter() - t)
        per_step.append(sum(denoiser) / steps)
    import torch

    return {"recipe": recipe, "size": size, "steps": steps, "threads": torch.get_num_threads(), "load_s": load_s,
            "first_call_s": first_s,
            "call_s": median_ci(calls), "denoise_step_s": median_ci(per_step), "weight_bytes": stats.weight_bytes,
            "quantized_params": getattr(stats, "quantized_params", None), "gen_peak_rss_mib": _vm_hwm_mib()}


def bench_pipeline(recipes: tuple[str, ...], model: str, sizes: tuple[int, ...], steps: int, repeats: int,
                   timeout_s: float, threads: int = 0) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        for recipe in recipes:
            load_before = os.getloadavg()[0]
            # subprocess.run blocks in wait(): the parent takes no CPU from the measured child.
            proc = subprocess.run([sys.executable, __file__, "--child", recipe, "--model", model, "--size", str(size),
                                   "--steps", str(steps), "--repeats", str(repeats), "--threads", str(threads)],
                                  capture_output=True, text=True, timeout=timeout_s, env=os.environ.copy(),
                                  check=False)
            line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
            row = json.loads(line) if proc.returncode == 0 and line else {
                "recipe": recipe, "size": size, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
            row["loadavg_1m"] = [load_before, os.getloadavg()[0]]
            rows.append(row)
            shown = f"{row['call_s']['median']:.2f} s" if "call_s" in row else f"error: {row['error']}"
            print(f"  {recipe} @ {size}²: {shown}", flush=True)
    return rows


# ---------------------------------------------------------------- stable-diffusion.cpp


def bench_sdcpp(model: str, size: int, steps: int, repeats: int, timeout_s: float = 3600.0,
                threads: int = 0) -> dict[str, Any]:
    """stable-diffusion.cpp on the same transformer as a GGUF file in BFL key layout (what sd.cpp reads).

    Each attempt runs in a fresh interpreter (sd.cpp can crash the process: a failed load followed by
    a generation segfaults), with its log in a file: first with the zoo model's VAE and both text
    encoders (the full FLUX layout sd.cpp expects), then with the transformer and VAE only. The first
    attempt that generates gives the timings; otherwise every attempt's error is the measured result.
    """
    import importlib.util

    if importlib.util.find_spec("stable_diffusion_cpp") is None:
        return {"status": "not installed",
                "install": "pip install stable-diffusion-cpp-python (builds ggml and sd.cpp with cmake)"}
    from importlib.metadata import version

    from diffquant.components import resolve_model
    from diffquant.gguf_writer import export_gguf

    model_dir = resolve_model(model)
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    gguf_path = tmp / f"dq-sdcpp-{model_dir.name}-Q4_K.gguf"
    if not gguf_path.is_file():
        export_gguf(model_dir, gguf_path, "Q4_K", component="transformer", layout="bfl")
    vae = next((model_dir / "vae").glob("*.safetensors"), None)
    clip = next((model_dir / "text_encoder").glob("*.safetensors"), None)
    t5 = next((model_dir / "text_encoder_2").glob("*.safetensors"), None)
    out: dict[str, Any] = {"status": "error", "package": f"stable-diffusion-cpp-python {version('stable-diffusion-cpp-python')}",
                           "gguf": gguf_path.name, "size": size, "steps": steps, "attempts": []}
    attempts = {"full layout (zoo VAE, CLIP-L, T5)": {"diffusion_model_path": gguf_path, "vae_path": vae,
                                                      "clip_l_path": clip, "t5xxl_path": t5},
                "transformer and VAE only": {"diffusion_model_path": gguf_path, "vae_path": vae}}
    for name, paths in attempts.items():
        log = tmp / f"dq-sdcpp-{len(out['attempts'])}.log"
        job = {"paths": {k: str(v) for k, v in paths.items()}, "size": size, "steps": steps, "repeats": repeats}
        try:
            with open(log, "w") as err:
                proc = subprocess.run([sys.executable, __file__, "--sdcpp-child", json.dumps(job),
                                       "--threads", str(threads)], stdout=subprocess.PIPE,
                                      stderr=err, text=True, timeout=timeout_s, check=False)
            rc: int | str = proc.returncode
            line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
        except subprocess.TimeoutExpired:
            rc, line = "timeout", None
        attempt: dict[str, Any] = {"attempt": name, "files": {k: Path(v).name for k, v in job["paths"].items()},
                                   "returncode": rc}
        text = log.read_text(errors="replace") if log.is_file() else ""
        if rc == 0 and line:
            attempt.update(json.loads(line))
            sampling = [float(m) for m in re.findall(r"sampling completed, taking ([0-9.]+)s", text)]
            if len(sampling) > 1:  # the first call is the warm-up
                attempt["denoise_step_s"] = median_ci([v / steps for v in sampling[1:]])
            out["attempts"].append(attempt)
            out.update({"status": "ok", **{k: attempt[k] for k in ("call_s", "denoise_step_s") if k in attempt}})
            break
        if isinstance(rc, int) and rc < 0:
            attempt["signal"] = signal.Signals(-rc).name
        attempt["errors"] = _sdcpp_errors(text)
        attempt["unknown_tensors"] = text.count("unknown tensor")  # tensors of a file sd.cpp did not map
        attempt["loaded"] = _sdcpp_lines(text, r"flux: depth|Diffusion model weight type|params backend buffer size|"
                                               r"total params memory|finished loaded file")
        out["attempts"].append(attempt)
    if out["status"] != "ok":
        out["error"] = "; ".join(f"{a['attempt']}: " + (" | ".join(a["errors"][:3]) or f"exit {a['returncode']}")
                                 + (f" ({a['signal']})" if "signal" in a else "") for a in out["attempts"])
    return out


def _sdcpp_errors(log_text: str) -> list[str]:
    """The lines of an sd.cpp log that say why it stopped (load failures, refusals, notices)."""
    return _sdcpp_lines(log_text, r"failed|wrong shape|not found|IMPORTANT NOTICE|error")


def _sdcpp_lines(log_text: str, pattern: str) -> list[str]:
    """Lines of an sd.cpp log matching ``pattern`` (case-insensitive; per-tensor warnings left out)."""
    keep = re.compile(pattern, re.IGNORECASE)
    lines = (ln.strip() for ln in log_text.replace("\r", "\n").splitlines())
    return [ln for ln in lines if keep.search(ln) and "unknown tensor" not in ln][:12]


def sdcpp_child(job: dict[str, Any]) -> dict[str, Any]:
    """One sd.cpp attempt in this (fresh) interpreter: load, one warm call, ``repeats`` timed calls."""
    from stable_diffusion_cpp import StableDiffusion

    started = time.perf_counter()
    sd = StableDiffusion(**job["paths"], n_threads=int(job.get("threads") or os.cpu_count() or 1), verbose=True)
    load_s = time.perf_counter() - started
    calls = []
    for _ in range(job["repeats"] + 1):
        t = time.perf_counter()
        sd.generate_image(prompt=PROMPT, width=job["size"], height=job["size"], sample_steps=job["steps"],
                          cfg_scale=1.0, guidance=3.5, seed=0)
        calls.append(time.perf_counter() - t)
    return {"load_s": load_s, "first_call_s": calls[0], "call_s": median_ci(calls[1:])}


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="layers,pipeline,sdcpp")
    parser.add_argument("--model", default="zoo:flux-dev-slice")
    parser.add_argument("--sizes", default="512", help="comma-separated square sizes, e.g. 512,1024")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--recipes", default=",".join(PIPELINE_RECIPES))
    parser.add_argument("--types", default=",".join(LAYER_TYPES))
    parser.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    parser.add_argument("--shapes", default=",".join(f"{i}x{o}" for i, o in SHAPES), help="in x out, comma-separated")
    parser.add_argument("--timeout", type=float, default=3600.0, help="per recipe, seconds")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "data" / "cpu_lowbit.json")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in every part (default: torch's own choice, recorded)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--sdcpp-child", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=512, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child, args.model, args.size, args.steps, args.repeats)))
        return 0
    if args.sdcpp_child:
        job = json.loads(args.sdcpp_child)
        job["threads"] = args.threads
        print(json.dumps(sdcpp_child(job)), flush=True)
        return 0
    if args.repeats < 5:
        parser.error("--repeats must be >= 5 (medians with CIs)")
    parts = set(args.parts.split(","))
    result: dict[str, Any] = {"host_before": host(), "repeats": args.repeats, "model": args.model,
                              "steps": args.steps, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    sizes = tuple(int(s) for s in args.sizes.split(","))
    if "layers" in parts:
        print("layers:", flush=True)
        result["layers"] = bench_layers(args.repeats, tuple(args.types.split(",")),
                                        tuple(int(t) for t in args.tokens.split(",")),
                                        tuple(tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")))
    if "pipeline" in parts:
        print("pipeline:", flush=True)
        result["pipeline"] = bench_pipeline(tuple(args.recipes.split(",")), args.model, sizes, args.steps,
                                            args.repeats, args.timeout, args.threads)
    if "sdcpp" in parts:
        print("stable-diffusion.cpp:", flush=True)
        result["sdcpp"] = bench_sdcpp(args.model, sizes[0], args.steps, args.repeats, args.timeout,
                                      args.threads)
        print(f"  {result['sdcpp'].get('status')}: {result['sdcpp'].get('error', '')}", flush=True)
    result["loadavg_1m_end"] = os.getloadavg()[0]
    from diffquant.atomic import write_text_atomic

    write_text_atomic(args.out, json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
