"""One module per quantization backend, and the single question every caller asks first:
can this recipe run on this device, and if not, why not?"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from diffquant.recipes.model import Recipe

_MODULES = {"bnb": "bnb", "torchao": "torchao", "quanto": "quanto", "gguf": "gguf", "layerwise": "layerwise"}
_MODULES |= {"sdnq": "sdnq", "modelopt": "modelopt"}


def get_backend(name: str) -> ModuleType:
    return importlib.import_module(f"diffquant.backends.{_MODULES[name]}")


_ACCELERATOR_OFFLOAD = (
    "{mode} offload moves components between CPU and an accelerator; with no GPU everything "
    "already lives in RAM (diffusers: 'requires accelerator'). Nearest that runs here: "
    "offload-group-leaf(disk) (keeps offloaded weights in files: a real RAM saving on CPU)."
)


# Measured with diffusers 0.42.1 (tests/test_backends.py keeps these honest): disk offload
# round-trips weights through safetensors files, which these tensor types do not survive.
_DISK_OFFLOAD_BROKEN = {
    "torchao": "is refused by diffusers: safetensors cannot serialise torchao tensor subclasses.",
    "quanto": "crashes (\"Attempted to access the data pointer on an invalid python storage\").",
    "gguf": "produces NaN latents (the packed GGUF blocks are not restored).",
    "bnb": "produces NaN latents for int8 (the row scales are not restored).",
    "sdnq": "produces NaN latents (uint4) or another image (int8) (the quantized tensors are not restored).",
}


def why_not_here(recipe: Recipe, device: str) -> str | None:
    """None if ``recipe`` can run on ``device`` ("cpu" or "cuda"); otherwise the reason."""
    for spec in recipe.quant:
        reason = get_backend(spec.backend).why_not_here(spec, device)
        if reason:
            return reason
    mem = recipe.memory
    if mem.offload_to_disk:
        for spec in recipe.quant:
            broken = _DISK_OFFLOAD_BROKEN.get(spec.backend)
            if broken and (spec.backend != "bnb" or spec.qtype == "int8"):
                return (f"Group offload to disk with {spec.backend}-{spec.qtype} weights {broken} "
                        "Nearest that runs: the same recipe with group offload in RAM (no disk), or "
                        "bnb-nf4 / fp8-layerwise with disk offload.")
    if device == "cpu":
        if mem.offload in ("model", "sequential"):
            return _ACCELERATOR_OFFLOAD.format(mode=mem.offload.capitalize())
        if mem.use_stream:
            return ("Group offload with stream=True overlaps host-to-device copies on a CUDA stream; "
                    "there is none on CPU. Nearest that runs here: the same recipe without (stream).")
    if device == "cpu" and recipe.compile.enabled and recipe.compile.mode.startswith("max-autotune"):
        for spec in recipe.quant:
            crash = _CPU_AUTOTUNE_CRASHES.get((spec.backend, spec.qtype))
            if crash:
                return crash
    return None  # reduce-overhead/max-autotune otherwise run on CPU; their CUDA graphs are not used


# Measured on CPU (torch 2.13.0, torchao 0.18.0, 2026-12-01: docs/benchmarks.md and the demo on
# zoo:shapes): the worker dies with SIGSEGV in native code during the first compiled call.
_CPU_AUTOTUNE_CRASHES = {
    ("torchao", "int8wo"): ("torch.compile with mode=max-autotune of torchao int8 weight-only layers "
                            "crashes on CPU (segmentation fault in inductor's compiled code; torch 2.13, "
                            "torchao 0.18). Nearest that ran here: "
                            "torchao-fp8wo+compile(fullgraph,mode=max-autotune), or torchao-int8wo without "
                            "compile."),
}


def notes_for(recipe: Recipe, device: str) -> list[str]:
    """Things that run but that a user should know (no refusal)."""
    notes = []
    mem = recipe.memory
    if device == "cpu" and mem.offload.startswith("group") and not mem.offload_to_disk:
        notes.append("group offload CPU->CPU runs but saves no memory (add (disk) for a real saving)")
    for spec in recipe.quant:
        if device == "cpu" and spec.backend == "torchao" and spec.qtype == "intx4wo":
            notes.append("torchao-intx4wo stores int4 values in int8 on CPU: no memory saving over int8")
        if device == "cpu" and spec.backend == "bnb":
            notes.append("bnb on CPU: layers swapped by hand (diffusers' bnb loader needs a GPU)")
        if spec.backend == "sdnq" and device == "cpu" and os.environ.get("SDNQ_USE_TORCH_COMPILE", "1") != "0":
            notes.append("sdnq compiles its dequantize step with torch.compile on first use "
                         "(SDNQ_USE_TORCH_COMPILE=0 runs it eagerly)")
    return notes


def prepare_loading(recipe: Recipe) -> None:
    """Let the backends of ``recipe`` prepare the libraries before a saved pipeline is loaded
    (a backend module may define ``before_load()``)."""
    for backend in sorted({spec.backend for spec in recipe.quant}):
        hook = getattr(get_backend(backend), "before_load", None)
        if hook is not None:
            hook()


def finish_loading(pipe: Any, model_dir: Path, recipe: Recipe) -> None:
    """Let the backends of ``recipe`` repair what the libraries' loaders got wrong in a saved
    pipeline just loaded from ``model_dir`` (a backend module may define ``after_load(pipe, dir)``)."""
    for backend in sorted({spec.backend for spec in recipe.quant}):
        hook = getattr(get_backend(backend), "after_load", None)
        if hook is not None:
            hook(pipe, Path(model_dir))
