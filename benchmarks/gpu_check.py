"""A GPU check in one command: FLUX.1-dev's transformer (and T5-XXL) with random weights, created
on the GPU, quantized there, with memory after loading and at peak plus the transformer's step
latency for bf16, bnb-nf4, torchao-int8wo, gguf-q4_k and fp8-layerwise, beside the seed's figures.

    python benchmarks/gpu_check.py                          # H100/H200: full 19+38 blocks, 1024x1024
    python benchmarks/gpu_check.py --blocks 2,4 --steps 3   # a quicker look
    python benchmarks/gpu_check.py --device cpu --tiny      # the dry run the tests use

Nothing is read from or written to disk but the result JSON (``--out``, default
``$OUT/gpu_check.json`` when ``$OUT`` is set, else ``gpu_check.json``). Each recipe runs in its own
process, so every figure starts from an empty GPU; the whole check stays inside ``--budget``
seconds (default 420, leaving room for start-up within 8 minutes): a recipe that would not fit
is recorded as skipped, with the reason.

What is measured, per recipe (counter names as in ``diffquant bench``):
- ``load.*``: after building the models and quantizing them (the caching allocator's cache is
  emptied first: the bf16 copy a build-then-quantize leaves behind is not what a loader keeps);
  ``build.cuda_max_allocated_mib`` is the peak while building and quantizing.
- ``gen.*``: peaks over ``--steps`` transformer forward passes at ``--size`` (batch 1, 512 text
  tokens, guidance 3.5); NVML is sampled every 20 ms.
- ``step.latency_s.*``: one transformer forward, synchronized; the first one is kept apart.
- ``weights.<component>.bytes``: storage the tensors really hold (``diffquant.inspect``).

How each recipe is applied, in memory:
- bnb-nf4: every ``nn.Linear`` swapped for ``bnb.nn.Linear4bit`` (diffquant's bnb backend); the
  move to the device is where bitsandbytes quantizes. Transformer and T5.
- torchao-int8wo: ``torchao.quantization.quantize_(model, Int8WeightOnlyConfig())``. Both.
- gguf-q4_k: diffusers' ``GGUFLinear`` with ``GGUFParameter`` weights in Q4_K blocks, the types
  chosen by diffquant's GGUF policy (embedders and final layer kept in bf16). The blocks are
  random bytes with valid fp16 scales, made on the device: quantizing 12B random weights with the
  numpy writer would take tens of minutes and give equally random weights. Transformer only.
- fp8-layerwise: ``enable_layerwise_casting(float8_e4m3fn, bfloat16)``. Transformer only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RECIPES = ("bf16", "bnb-nf4", "torchao-int8wo", "gguf-q4_k", "fp8-layerwise")
MIB = 1024 * 1024
# The seed article, 1x H100 80GB, whole FluxPipeline (transformer + T5-XXL + CLIP-L + VAE), 50 steps
# at 1024x1024: memory after loading and peak in GiB (its "GB" are torch's bytes / 1024**3), and
# its inference time in seconds.
SEED = {"bf16": (31.447, 36.166, 12.0), "bnb-nf4": (12.584, 17.281, 12.0), "torchao-int8wo": (17.020, 21.482, 15.0),
        "fp8-layerwise": (23.682, 28.451, 13.0)}
SEED_STEPS = 50
COMPARABLE = ("Seed figures are a whole FluxPipeline on one H100 (transformer + T5-XXL + CLIP-L + VAE; quantized "
              "recipes apply to transformer and T5, fp8-layerwise to the transformer); peak over 50 steps at "
              "1024x1024 plus VAE decoding; seed s/step = its inference time / 50, text encoders and VAE included. "
              "Here: transformer + T5-XXL (unless --no-t5), no CLIP-L/VAE (~0.4 GiB in bf16) and no pipeline: "
              "'after loading' compares to the seed's less ~0.4 GiB; 'peak' is the transformer's forward pass only "
              "(the seed's also holds the VAE decode); s/step compares as an upper bound for the seed.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run of the code paths)")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated subset of {','.join(RECIPES)}")
    parser.add_argument("--tiny", action="store_true", help="a tiny transformer and T5 (seconds on a CPU)")
    parser.add_argument("--blocks", default=None, help="DOUBLE,SINGLE transformer blocks (default 19,38: FLUX.1-dev)")
    parser.add_argument("--no-t5", action="store_true", help="build the transformer only")
    parser.add_argument("--size", default=None, help="image size WxH the step runs at (default 1024x1024; tiny 64x64)")
    parser.add_argument("--steps", type=int, default=None, help="timed forward passes (default 5; tiny 2)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all recipes together (default 420)")
    parser.add_argument("--isolation", choices=("process", "none"), default="process",
                        help="process (default): a fresh process per recipe; none: all in this one (quick dry runs)")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (a folder gets gpu_check.json)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.size = args.size or ("64x64" if args.tiny else "1024x1024")
    args.steps = args.steps or (2 if args.tiny else 5)
    unknown = [r for r in args.recipes.split(",") if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; choose from {', '.join(RECIPES)}")
    return args


# --- models ---------------------------------------------------------------------------------------

def configs(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """FLUX.1-dev's transformer and T5-XXL configs (diffquant's zoo), or tiny ones whose widths are
    multiples of 256, so every recipe takes the same path as at full size."""
    from diffquant.zoo.flux import FLUX_DEV_TRANSFORMER, T5_XXL

    transformer, t5 = dict(FLUX_DEV_TRANSFORMER), dict(T5_XXL)
    if args.tiny:
        transformer.update(num_layers=1, num_single_layers=2, num_attention_heads=2, joint_attention_dim=256,
                           pooled_projection_dim=256)
        t5.update(d_model=256, d_ff=512, d_kv=64, num_heads=4, num_layers=1, vocab_size=1000)
    if args.blocks:
        double, single = (int(x) for x in args.blocks.split(","))
        transformer.update(num_layers=double, num_single_layers=single)
    return transformer, None if args.no_t5 else t5


def build(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """The models, created directly on ``device`` in bf16 with their default random init."""
    import torch
    from diffusers import FluxTransformer2DModel

    from diffquant.zoo.flux import default_dtype, t5_config

    transformer_cfg, t5_cfg = configs(args)
    models: dict[str, Any] = {}
    with torch.device(device), default_dtype(torch.bfloat16):
        models["transformer"] = FluxTransformer2DModel(**transformer_cfg).eval()
        if t5_cfg is not None:
            from transformers import T5EncoderModel

            models["text_encoder_2"] = T5EncoderModel(t5_config(t5_cfg, int(t5_cfg["vocab_size"]))).eval()
    for model in models.values():
        model.requires_grad_(False)
    return models


# --- recipes ----------------------------------------------------------------------------------------

def quantize(recipe: str, models: dict[str, Any], device: str) -> None:
    import torch

    from diffquant.recipes import parse_recipe

    if recipe == "bf16":
        return
    spec = parse_recipe(recipe).quant[0]
    if spec.backend == "bnb":
        from diffquant.backends.bnb import swap_linear_layers

        for model in models.values():
            swap_linear_layers(model, spec, torch.bfloat16, device)
    elif spec.backend == "torchao":
        from torchao.quantization import quantize_

        from diffquant.backends.torchao import ao_config

        for model in models.values():
            quantize_(model, ao_config(spec))
    elif spec.backend == "layerwise":
        models["transformer"].enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn,
                                                       compute_dtype=torch.bfloat16)
    elif spec.backend == "gguf":
        random_gguf_linears(models["transformer"], spec.qtype.upper(), device)
    else:  # pragma: no cover - RECIPES and this function agree
        raise AssertionError(recipe)


# Byte offsets of the fp16 scale fields inside one block (ggml's block structs).
FP16_FIELDS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q2_K": (80, 82), "Q3_K": (108,), "Q6_K": (208,), "Q8_0": (0,),
               "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2)}


def random_gguf_linears(model: Any, qtype: str, device: str, scale: float = 1e-4) -> int:
    """Swap each ``nn.Linear`` diffquant's GGUF policy would quantize for a ``GGUFLinear`` holding
    random blocks of the chosen type (random quants, every fp16 scale ``scale``); returns how many."""
    import gguf
    import torch
    from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter

    from diffquant.gguf_writer.policy import TypePolicy

    policy, swapped = TypePolicy(qtype), 0
    generator = torch.Generator(device=device).manual_seed(0)
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear:
                continue
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            chosen = policy.choose(f"{full}.weight", tuple(child.weight.shape), "BF16").qtype
            if chosen not in FP16_FIELDS:
                continue  # kept in bf16, as the writer keeps it
            ggml_type = gguf.GGMLQuantizationType[chosen]
            block, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
            rows, cols = child.weight.shape
            blocks = torch.randint(0, 256, (rows * cols // block, type_size), dtype=torch.uint8,
                                   device=device, generator=generator)
            fp16 = torch.tensor([scale], dtype=torch.float16, device=device).view(torch.uint8)
            for offset in FP16_FIELDS[chosen]:
                blocks[:, offset:offset + 2] = fp16
            new = GGUFLinear(child.in_features, child.out_features, child.bias is not None,
                             compute_dtype=torch.bfloat16, device="meta")  # its weight is replaced below
            new.weight = GGUFParameter(blocks.view(rows, cols // block * type_size), quant_type=ggml_type)
            new.bias = None if child.bias is None else torch.nn.Parameter(child.bias.detach(), requires_grad=False)
            new.requires_grad_(False)
            setattr(parent, child_name, new)
            swapped += 1
    return swapped


# --- one recipe, in its own process ---------------------------------------------------------------

def step_inputs(config: dict[str, Any], size: str, device: str, text_tokens: int) -> dict[str, Any]:
    import torch

    from diffquant.arguments import parse_width_height

    width, height = parse_width_height(size)
    tokens = (height // 16) * (width // 16)  # VAE /8, then 2x2 patches
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int) -> Any:
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.bfloat16)

    inputs = {"hidden_states": randn(1, tokens, config["in_channels"]),
              "encoder_hidden_states": randn(1, text_tokens, config["joint_attention_dim"]),
              "pooled_projections": randn(1, config["pooled_projection_dim"]),
              "timestep": torch.tensor([1.0], device=device, dtype=torch.bfloat16),
              "img_ids": torch.zeros(tokens, 3, device=device), "txt_ids": torch.zeros(text_tokens, 3, device=device),
              "return_dict": False}
    if config.get("guidance_embeds"):
        inputs["guidance"] = torch.tensor([3.5], device=device, dtype=torch.bfloat16)
    return inputs


def run_recipe(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from diffquant.bench.measure import (
        Nvml,
        Sampler,
        cuda_counters,
        latency_stats,
        proc_status,
        reset_cuda_peaks,
    )
    from diffquant.inspect import module_stats

    device, cuda = args.device, args.device.startswith("cuda")
    out: dict[str, Any] = {"recipe": args.worker}
    nvml = Nvml() if cuda else None
    if cuda:
        torch.cuda.init()
        out.update(cuda_counters("start", nvml=nvml))
        reset_cuda_peaks()
    started = time.perf_counter()
    models = build(args, device)
    with torch.device(device):  # layers a backend creates (bnb's placeholders) start on the device
        quantize(args.worker, models, device)
    if cuda:
        import gc

        torch.cuda.synchronize()
        out["build.cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / MIB
        gc.collect()
        torch.cuda.empty_cache()
    out["load.wall_s"] = time.perf_counter() - started
    for name, model in models.items():
        stats = module_stats(model)
        out[f"weights.{name}.bytes"], out[f"weights.{name}.params"] = stats.weight_bytes, stats.params
        out[f"weights.{name}.bits_per_weight"] = stats.bits_per_weight
    out["weights.total_bytes"] = sum(out[f"weights.{n}.bytes"] for n in models)
    out.update(cuda_counters("load", nvml=nvml) if cuda else {})
    out["load.rss_mib"] = proc_status().get("rss")

    transformer = models["transformer"]
    inputs = step_inputs(dict(transformer.config), args.size, device, 32 if args.tiny else 512)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        reset_cuda_peaks()
    times: list[float] = []  # the first pass (kernel selection, lazy init) first, then the timed ones
    with Sampler(gpu_used=nvml.used_mib if nvml else None) as sampler, torch.no_grad():
        sampler.phase("gen")
        for _ in range(args.steps + 1):
            sync()
            tick = time.perf_counter()
            result = transformer(**inputs)[0]
            sync()
            times.append(time.perf_counter() - tick)
        peaks = sampler.peak("gen")
    out["first_step.latency_s"] = times[0]
    out.update(latency_stats("step.latency_s", times[1:]))
    out["step.output_finite"] = int(bool(torch.isfinite(result).all()))
    out["gen.peak_rss_mib"] = peaks.rss_mib
    if cuda:
        counters = cuda_counters("gen", nvml=nvml)
        out.update({k: v for k, v in counters.items() if "max" in k or "nvml" in k})
        out["gen.peak_gpu_used_mib.nvml"] = peaks.gpu_used_mib
    return out


# --- the parent: one worker per recipe, a table, the JSON -------------------------------------------

def worker_argv(args: argparse.Namespace, recipe: str, result: Path) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", recipe, "--worker-out", str(result),
            "--device", args.device, "--size", args.size, "--steps", str(args.steps)]
    argv += ["--tiny"] * args.tiny + ["--no-t5"] * args.no_t5 + (["--blocks", args.blocks] if args.blocks else [])
    return argv


def run_in_process(args: argparse.Namespace, recipe: str) -> dict[str, Any]:
    """One recipe in this process (``--isolation none``): figures after the first recipe carry
    whatever the earlier ones left behind, so use it for dry runs only."""
    import gc
    import traceback

    try:
        result = {**run_recipe(argparse.Namespace(**{**vars(args), "worker": recipe})), "status": "ok"}
    except Exception:  # noqa: BLE001 - the record says what failed; the other recipes still run
        result = {"recipe": recipe, "status": "error", "error": traceback.format_exc()[-3000:]}
    gc.collect()
    return result


def run_all(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + args.budget
    for recipe in args.recipes.split(","):
        left = deadline - time.monotonic()
        # A worker needs start-up, building and quantizing: don't start one with under 30 s left.
        if left < 30:
            results[recipe] = {"recipe": recipe, "status": "skipped",
                               "error": f"the --budget of {args.budget:.0f} s was spent before it could start"}
            print(f"{recipe}: skipped (budget spent)", flush=True)
            continue
        started = time.monotonic()
        if args.isolation == "none":
            results[recipe] = run_in_process(args, recipe)
        else:
            results[recipe] = run_worker(args, recipe, left)
        results[recipe]["run.wall_s"] = time.monotonic() - started
        print(f"{recipe}: {results[recipe]['status']} in {results[recipe]['run.wall_s']:.0f} s", flush=True)
    return results


def run_worker(args: argparse.Namespace, recipe: str, timeout_s: float) -> dict[str, Any]:
    """One recipe in a fresh interpreter; a crash or timeout becomes an error record with the log."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        try:
            proc = subprocess.run(worker_argv(args, recipe, result), capture_output=True, text=True,
                                  timeout=timeout_s, check=False)
            log, code = (proc.stdout + proc.stderr)[-3000:], proc.returncode
        except subprocess.TimeoutExpired as exc:
            log = _text(exc.stdout) + _text(exc.stderr)
            log, code = log[-3000:] + f"\n(killed after {timeout_s:.0f} s: the --budget ran out)", None
        if code == 0 and result.is_file():
            return {**json.loads(result.read_text()), "status": "ok"}
        return {"recipe": recipe, "status": "error", "returncode": code, "error": log.strip()}


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data or ""


def gib(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value / 1024:.3f}"


def table(results: dict[str, dict[str, Any]], cuda: bool) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the check's table (also what scripts/render_docs.py's ``gpu_check`` view
    renders from a committed result)."""
    if cuda:
        head = ["recipe", "weights GiB", "after loading: alloc / reserved / NVML GiB",
                "peak: max alloc / max reserved / NVML GiB", "build peak GiB", "step p50 s",
                "seed: load / peak GiB", "seed s/step"]
    else:
        head = ["recipe", "weights GiB", "after loading: RSS GiB", "peak RSS GiB", "build peak GiB", "step p50 s",
                "seed: load / peak GiB", "seed s/step"]
    rows = []
    for recipe, r in results.items():
        seed = SEED.get(recipe)
        seed_cells = [f"{seed[0]:.3f} / {seed[1]:.3f}", f"{seed[2] / SEED_STEPS:.2f}"] if seed else ["-", "-"]
        if r.get("status") != "ok":
            last = (str(r.get("error") or "").strip().splitlines() or [""])[-1][:120].replace("|", "/")
            rows.append([recipe, f"{r.get('status')}: {last}", "", "", "", "", *seed_cells])
            continue
        if cuda:
            load = " / ".join(gib(r.get(k)) for k in ("load.cuda_allocated_mib", "load.cuda_reserved_mib",
                                                       "load.gpu_used_mib.nvml"))
            peak = " / ".join(gib(r.get(k)) for k in ("gen.cuda_max_allocated_mib", "gen.cuda_max_reserved_mib",
                                                       "gen.peak_gpu_used_mib.nvml"))
            build_peak = gib(r.get("build.cuda_max_allocated_mib"))
        else:
            load, peak, build_peak = gib(r.get("load.rss_mib")), gib(r.get("gen.peak_rss_mib")), "-"
        p50 = r.get("step.latency_s.p50")
        rows.append([recipe, gib(r["weights.total_bytes"] / MIB), load, peak, build_peak,
                     "-" if p50 is None else f"{p50:.3f}", *seed_cells])
    return head, rows


def print_table(results: dict[str, dict[str, Any]], cuda: bool) -> None:
    head, rows = table(results, cuda)
    for line in (head, ["---"] * len(head), *rows):
        print("|" + "".join(f" {c} |" if c else " |" for c in line))
    print(f"\n{COMPARABLE}")


def output_path(args: argparse.Namespace) -> Path:
    """--out FILE.json, --out FOLDER, else $OUT/gpu_check.json, else ./gpu_check.json."""
    if args.out is None:
        return Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else Path("gpu_check.json")
    return args.out if args.out.suffix == ".json" else args.out / "gpu_check.json"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = run_recipe(args)
        args.worker_out.write_text(json.dumps(result, default=float))
        return 0
    from diffquant.bench.env import capture_env

    started = time.monotonic()
    transformer_cfg, t5_cfg = configs(args)
    print(f"gpu_check: {args.device}, transformer {transformer_cfg['num_layers']}+{transformer_cfg['num_single_layers']}"
          f" blocks{'' if t5_cfg is None else ' + T5-XXL' if not args.tiny else ' + tiny T5'}, {args.size}, "
          f"{args.steps} timed steps, budget {args.budget:.0f} s", flush=True)
    results = run_all(args)
    print()
    print_table(results, args.device.startswith("cuda"))
    env = capture_env(gpu=args.device.startswith("cuda"))
    payload = {"tool": "benchmarks/gpu_check.py", "argv": sys.argv[1:] if argv is None else list(argv),
               "commit": env.get("git_commit"), "versions": env.get("packages"), "env": env,
               "settings": {"device": args.device, "tiny": args.tiny, "transformer": transformer_cfg,
                            "text_encoder_2": t5_cfg, "size": args.size, "steps": args.steps},
               "seed": {"figures_gib_gib_s": SEED, "steps": SEED_STEPS, "comparable": COMPARABLE},
               "wall_s": time.monotonic() - started, "recipes": results}
    path = output_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    print(f"\nWrote {path} ({time.monotonic() - started:.0f} s)")
    return 0 if all(r.get("status") == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
