"""A small synthetic results database built through the store's API (shared by the quality and
report tests): a bf16 reference, 8-bit-like and 4-bit-like runs (light and heavy noise on the
reference's pixels and latents), a compiled run with identical pixels, and a failed run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PROMPTS = ("A red cat on a hill, oil painting.", "A blue robot in the rain, photograph.")
SEEDS = (0, 1)
SIZE = 64
MIB = 1024 * 1024

# recipe -> (pixel noise sigma, latent noise, after-load MiB, peak MiB, latency s, compile s)
RUNS = {
    "bf16": (0.0, 0.0, 900.0, 1400.0, 0.80, None),
    "quanto-int8": (2.0, 0.02, 520.0, 1000.0, 1.10, None),
    "quanto-int4": (14.0, 0.15, 330.0, 820.0, 1.30, None),
    "bf16+compile": (0.0, 0.0, 910.0, 1450.0, 0.55, 42.0),
}


def base_image(prompt_index: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(100 * prompt_index + seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    colour = rng.uniform(40, 200, 3)
    wave = 50 * np.sin(xx / (4.0 + prompt_index))[..., None] * np.cos(yy / (6.0 + seed))[..., None]
    return np.clip(colour + wave + rng.normal(0, 4, (SIZE, SIZE, 3)), 0, 255)


def make_db(tmp_path: Path, *, with_failure: bool = True, device: str = "cpu") -> Path:
    """``device="cuda"`` records the CUDA counters (x 16, so memory reaches GiB) instead of RSS."""
    import torch
    from safetensors.torch import save_file

    from diffquant.store import ImageRow, ResultsDB, RunRow

    db_path = tmp_path / "results.db"
    settings = {"prompts": list(PROMPTS), "seeds": list(SEEDS), "steps": 2, "height": SIZE, "width": SIZE,
                "guidance_scale": None, "device": device, "repeats": 2, "warmup": 0}
    env = {"hostname": "test-host", "platform": "Linux-x86_64", "python": "3.11.2", "cpu_model": "Test CPU",
           "cpu_count": 2, "packages": {"torch": "2.13.0", "diffusers": "0.36.0"}, "diffquant": "0.1.0"}
    with ResultsDB(db_path) as db:
        for k, (recipe, (sigma, lat_noise, load_mib, peak_mib, latency, compile_s)) in enumerate(RUNS.items()):
            rng = np.random.default_rng(7 + k)
            folder = tmp_path / "images" / recipe.replace("+", "_")
            folder.mkdir(parents=True)
            images = []
            for pi, prompt in enumerate(PROMPTS):
                for seed in SEEDS:
                    arr = base_image(pi, seed) + (rng.normal(0, sigma, (SIZE, SIZE, 3)) if sigma else 0)
                    path = folder / f"p{pi}_s{seed}.png"
                    Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8)).save(path)
                    gen = torch.Generator().manual_seed(100 * pi + seed)
                    lat = torch.randn(1, 16, 8, 8, generator=gen)
                    lat = lat + lat_noise * torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(k))
                    lat_path = folder / f"p{pi}_s{seed}.safetensors"
                    save_file({"latents": lat}, str(lat_path))
                    images.append(ImageRow(0, 0, prompt, pi, seed, str(path), str(lat_path)))
            metrics = {"load.rss_mib": load_mib, "load.peak_rss_mib": load_mib * 1.2, "gen.peak_rss_mib": peak_mib,
                       "call.latency_s.p50": latency, "call.latency_s.p90": latency * 1.1,
                       "compile.time_s": compile_s, "weights.total_bytes": load_mib * 0.6 * MIB}
            if device == "cuda":
                metrics.update({"load.cuda_reserved_mib": load_mib * 16, "gen.cuda_max_reserved_mib": peak_mib * 16,
                                "load.cuda_max_reserved_mib": load_mib * 20})
            db.record_run(RunRow(0, "sweep-1", "zoo:tiny-flux", recipe, f"hash{k}", settings, "ok", None, metrics,
                                 env, f"2025-01-01T00:0{k}:00Z", f"2025-01-01T00:0{k}:30Z", run_key=f"key{k}"),
                          images)
        if with_failure:
            db.record_run(RunRow(0, "sweep-1", "zoo:tiny-flux", "bnb-nf4", "hashf", settings, "error",
                                 "BackendUnavailable: bitsandbytes needs a CUDA device\nTraceback ...", {}, env,
                                 "2025-01-01T00:09:00Z", "2025-01-01T00:09:01Z", run_key="keyf"))
    return db_path
