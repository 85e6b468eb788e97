"""Memory options (offload, VAE tiling/slicing) and torch.compile, applied to a loaded pipeline."""

from __future__ import annotations

import tempfile
from typing import Any

from diffquant.recipes.model import Recipe


def place_and_offload(pipe: Any, recipe: Recipe, device: str) -> list[str]:
    """Move the pipeline to ``device`` or set up offloading; returns notes for the load record."""
    import torch

    notes: list[str] = []
    mem = recipe.memory
    vae = getattr(pipe, "vae", None)
    if mem.vae_tiling and vae is not None:
        vae.enable_tiling()
    if mem.vae_slicing and vae is not None:
        vae.enable_slicing()
    if mem.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif mem.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif mem.offload.startswith("group"):
        disk = tempfile.mkdtemp(prefix="diffquant-offload-") if mem.offload_to_disk else None
        if disk:
            notes.append(f"group offload to disk at {disk}")
        pipe.enable_group_offload(
            onload_device=torch.device(device), offload_device=torch.device("cpu"),
            offload_type="leaf_level" if mem.offload == "group-leaf" else "block_level",
            num_blocks_per_group=mem.blocks_per_group if mem.offload == "group-block" else None,
            use_stream=mem.use_stream, offload_to_disk_path=disk,
        )
    elif device != "cpu":
        pipe.to(device)
    return notes


def apply_compile(pipe: Any, recipe: Recipe, denoiser: str) -> list[str]:
    """Compile the requested components in place (the pipeline keeps its own module objects)."""
    spec = recipe.compile
    if not spec.enabled:
        return []
    compiled = []
    for name in spec.components:
        target = denoiser if name == "denoiser" else name
        module = getattr(pipe, target, None)
        if module is None:
            continue
        kwargs = {"mode": None if spec.mode == "default" else spec.mode, "fullgraph": spec.fullgraph}
        if spec.regional:
            compile_regions(module, target, kwargs)
        else:
            module.compile(**kwargs)
        compiled.append(target)
    what = "the repeated blocks of " if spec.regional else ""
    return [(f"compiled {what}{', '.join(compiled)} (mode={spec.mode}, fullgraph={spec.fullgraph}); "
            "the first call pays the compile time")]


def compile_regions(module: Any, name: str, kwargs: dict[str, Any]) -> None:
    """Regional compilation: diffusers compiles one block class once and reuses the code for every
    block of that class (``compile_repeated_blocks``), instead of tracing the whole model."""
    from diffquant.errors import DiffquantError

    blocks = getattr(module, "_repeated_blocks", None)
    if not blocks or not hasattr(module, "compile_repeated_blocks"):
        raise DiffquantError(f"compile(regional) needs a model that names its repeated blocks; {name} "
                             f"({type(module).__name__}) does not (diffusers' _repeated_blocks is empty).",
                             hint="use compile without (regional) to compile the whole model")
    module.compile_repeated_blocks(**kwargs)
