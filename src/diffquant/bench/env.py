"""The environment a run was measured in: machine, accelerator, library versions, diffquant's
version and git commit. Library versions come from package metadata (no imports), GPU details
from torch only when ``gpu=True`` (the worker, which has torch loaded anyway)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

# Recorded with every run: these and every backend's packages (diffquant.backends.tracked_packages).
PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "numpy", "pynvml", "nvidia-ml-py")
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile", "neon", "asimd")


def package_versions() -> dict[str, str | None]:
    from diffquant.backends import tracked_packages
    from diffquant.versions import library_versions

    wanted = set(PACKAGES) | set(tracked_packages())
    return {k: v for k, v in library_versions().items() if k in wanted}


def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    try:
        import psutil

        mem_total = psutil.virtual_memory().total
    except Exception:  # noqa: BLE001
        mem_total = None
    return {"cpu_model": model, "cpu_count": os.cpu_count(),
            "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu_flags": sorted(f for f in _CPU_FLAGS if f in flags), "ram_bytes": mem_total}


def git_commit() -> dict[str, Any]:
    """The diffquant source tree's commit and whether it had uncommitted changes (None outside git)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                               cwd=here.parent, capture_output=True, text=True, timeout=10,
                               check=False).stdout.strip()
        return {"git_commit": commit or None, "git_dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def gpu_info() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"gpu": None}
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    out: dict[str, Any] = {"gpu": props.name, "gpu_memory_bytes": int(props.total_memory),
                           "gpu_capability": f"{props.major}.{props.minor}", "gpu_count": torch.cuda.device_count(),
                           "cuda_version": torch.version.cuda, "cudnn_version": torch.backends.cudnn.version()}
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        out["gpu_driver"] = driver.decode() if isinstance(driver, bytes) else driver
    except Exception:  # noqa: BLE001 - NVML is optional
        out["gpu_driver"] = None
    return out


def capture_env(*, gpu: bool = False) -> dict[str, Any]:
    from diffquant._version import __version__

    env: dict[str, Any] = {
        "hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        **cpu_info(), "packages": package_versions(), "diffquant": __version__, **git_commit(),
    }
    if gpu:
        env.update(gpu_info())
        import torch

        env["torch_threads"] = torch.get_num_threads()
    return env
