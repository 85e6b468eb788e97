"""Memory options (offload, VAE tiling/slicing) and torch.compile, applied to a loaded pipeline."""

from __future__ import annotations

import tempfile
from typing import Any

from diffquant.recipes.model import Recipe

# Inductor options added to torch.compile's mode when the compiled module holds weight-only-quantized
# weights (tensor subclasses dequantized inside the graph) on CPU. Modes "max-autotune" and
# "reduce-overhead" ask for CUDA graphs; on CPU no graph is captured, but the request turns on
# inductor's graph-partition reordering, which treats every CPU node as a partition and moves each
# node without dependencies to the front of the graph: every layer's fp8->bf16 dequantization (it
# reads only graph inputs) runs first, in one kernel, and the whole bf16 copy of the weights is
# alive during a call (benchmarks/inductor_fp8_dequant.py shows the code). Without the request,
# each dequantized weight is written just before its matmul and freed after it.
CPU_QUANTIZED_WEIGHT_OPTIONS: dict[str, Any] = {"triton.cudagraphs": False}


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
    compiled, tuned = [], []
    for name in spec.components:
        target = denoiser if name == "denoiser" else name
        module = getattr(pipe, target, None)
        if module is None:
            continue
        kwargs = compile_kwargs(module, spec.mode, spec.fullgraph)
        if "options" in kwargs:
            tuned.append(target)
        if spec.regional:
            compile_regions(module, target, kwargs)
        else:
            module.compile(**kwargs)
        compiled.append(target)
    what = "the repeated blocks of " if spec.regional else ""
    notes = [(f"compiled {what}{', '.join(compiled)} (mode={spec.mode}, fullgraph={spec.fullgraph}); "
              "the first call pays the compile time")]
    if tuned:
        notes.append(f"{', '.join(tuned)}: quantized weights on CPU, so the mode's inductor options plus "
                     + ", ".join(f"{k}={v}" for k, v in CPU_QUANTIZED_WEIGHT_OPTIONS.items())
                     + " (each layer's dequantized weight lives only around its matmul)")
    return notes


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


def compile_kwargs(module: Any, mode: str, fullgraph: bool) -> dict[str, Any]:
    """torch.compile's arguments for ``module``: ``mode`` as given, or, for a module with
    weight-only-quantized weights on CPU, the mode's inductor options plus
    :data:`CPU_QUANTIZED_WEIGHT_OPTIONS` (torch.compile takes a mode or options, not both)."""
    kwargs: dict[str, Any] = {"mode": None if mode == "default" else mode, "fullgraph": fullgraph}
    if kwargs["mode"] is None or not quantized_weights_on_cpu(module):
        return kwargs
    from torch._inductor import config, list_mode_options

    base = dict(list_mode_options(kwargs["mode"]))
    current = config.get_config_copy()
    if all(base.get(k, current.get(k)) == v for k, v in CPU_QUANTIZED_WEIGHT_OPTIONS.items()):
        return kwargs  # nothing to change for this mode (e.g. max-autotune-no-cudagraphs)
    return {"fullgraph": fullgraph, "options": {**base, **CPU_QUANTIZED_WEIGHT_OPTIONS}}


def quantized_weights_on_cpu(module: Any) -> bool:
    """Whether ``module`` holds a CPU parameter that is a traceable tensor subclass (torchao's and
    quanto's quantized weights): torch.compile traces its dequantization into the graph."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    params = getattr(module, "parameters", None)
    if params is None:
        return False
    return any(p.device.type == "cpu" and is_traceable_wrapper_subclass(p) for p in params())
