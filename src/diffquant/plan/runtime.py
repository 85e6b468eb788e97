"""The modelled part of a plan: what a run needs besides its weights, and what offloading keeps
resident. Every figure here is a model, kept apart from the exact weight bytes and named, so a
table can say which is which.

Factors (``ACTIVATION_BYTES_PER_TOKEN_WIDTH`` etc.) are first estimates read from the layer shapes
(a DiT block holds about 20 activations of the model width per token at its widest point; a VAE
decoder's last up-block about 6 full-resolution feature maps); ``benchmarks/plan_accuracy.py``
measures them against real runs and prints the two side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from diffquant.plan.weights import ComponentBytes
from diffquant.recipes.model import Recipe

if TYPE_CHECKING:
    from diffquant.backends.base import MemoryTraits

MIB = 1024 * 1024
CUDA_CONTEXT_BYTES = 500 * MIB  # CUDA context + cuBLAS workspace: outside torch's counters, in nvidia-smi
CPU_PROCESS_BYTES = 440 * MIB  # a worker with torch + diffusers + transformers imported and a pipeline loaded
CPU_CALL_BYTES = 75 * MIB  # a first generation call on CPU: lazily imported code, allocator arenas
# What each backend adds (its library's import, source pages read while converting, float32
# temporaries, its own file, dequantized copies per call) is its module's ``memory``
# (diffquant.backends.base.MemoryTraits); the figures were measured on zoo:flux-dev-slice.
LOAD_TEMPORARIES = 3  # float32 copies of one layer alive while it is quantized
ACTIVATION_BYTES_PER_TOKEN_WIDTH = 20  # x dtype bytes: live activations of one DiT block per token and channel
VAE_DECODE_MAPS = 6  # full-resolution feature maps alive in the VAE decoder's last up-block
TEXT_ENCODER_MAPS = 12  # x seq x width: a text encoder layer's live activations
# Group offload to disk on CPU: weights come back through files, and part of their pages stay
# resident (CPU-FACTS: peak 1030 vs 1462 MiB for an 807 MiB transformer -> ~46% of it stayed).
DISK_OFFLOAD_RESIDENT_FRACTION = 0.46


@dataclass(frozen=True)
class RunShape:
    """What a generation call looks like: image size, steps, batch and how guidance runs."""

    height: int
    width: int
    steps: int
    batch: int = 1
    text_tokens: int = 512
    cfg_batch: int = 1  # 2 when classifier-free guidance doubles the denoiser's batch (SD3)

    def to_dict(self) -> dict[str, Any]:
        return {"height": self.height, "width": self.width, "steps": self.steps, "batch": self.batch,
                "text_tokens": self.text_tokens, "cfg_batch": self.cfg_batch}


@dataclass(frozen=True)
class MemoryPlan:
    """Predicted memory of one recipe. ``weights_bytes`` and ``resident_weights_bytes`` are exact
    (from the backends' formats and the offload rule); everything in ``modelled`` is a model."""

    weights_bytes: int  # every component's stored bytes
    resident_weights_bytes: int  # of those, held in device memory once loaded
    peak_weights_bytes: int  # held in device memory at the busiest moment of a call
    modelled: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def _sum(self, prefix: str) -> int:
        return sum(v for k, v in self.modelled.items() if k.startswith(prefix))

    @property
    def after_load_bytes(self) -> int:
        """Resident weights + the process + what stays resident from loading ("resident.*")."""
        return self.resident_weights_bytes + self.modelled.get("process", 0) + self._sum("resident.")

    @property
    def peak_bytes(self) -> int:
        """Weights at the busiest moment + the process + "resident.*" + "call.*" + the largest phase."""
        extra = max((v for k, v in self.modelled.items() if k.startswith("activations.")), default=0)
        return (self.peak_weights_bytes + self.modelled.get("process", 0) + self._sum("resident.")
                + self._sum("call.") + extra)

    @property
    def load_peak_bytes(self) -> int:
        """After loading + what loading holds only while it runs ("load_*": temporaries, source pages)."""
        return self.after_load_bytes + self._sum("load_")

    def to_dict(self) -> dict[str, Any]:
        return {"weights_bytes": self.weights_bytes, "resident_weights_bytes": self.resident_weights_bytes,
                "peak_weights_bytes": self.peak_weights_bytes, "modelled_bytes": dict(self.modelled),
                "after_load_bytes": self.after_load_bytes, "peak_bytes": self.peak_bytes,
                "load_peak_bytes": self.load_peak_bytes, "notes": list(self.notes)}


def _largest_group(model: Any, mode: str, blocks: int) -> int:
    """Bytes of the largest group group-offloading moves at once (leaf: one layer; block: ``blocks``
    consecutive blocks of a ModuleList, the modules outside any list counted as one group)."""
    import torch

    from diffquant.plan.weights import plain_bytes

    def own(m: Any) -> int:
        return sum(t.numel() * t.element_size() for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)])

    if mode == "group-leaf":
        return max((own(m) for m in model.modules()), default=0)
    largest, outside = 0, own(model)
    for child in model.children():
        if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)):
            sizes = [plain_bytes(b) for b in child]
            for i in range(0, len(sizes), blocks):  # diffusers groups blocks [0, n), [n, 2n), ...
                largest = max(largest, sum(sizes[i:i + blocks]))
        else:
            outside += plain_bytes(child)
    return max(largest, outside)


def _stored_fraction(cb: ComponentBytes) -> float:
    return cb.stored_bytes / cb.plain_bytes if cb.plain_bytes else 1.0


def _activations(configs: dict[str, Any], components: dict[str, ComponentBytes], shape: RunShape,
                  dtype_bytes: int, denoiser: str) -> dict[str, int]:
    """Peak activation bytes of each phase of a call (text encoding, denoising, VAE decoding)."""
    out: dict[str, int] = {}
    vae = configs.get("vae", {})
    levels = len(vae.get("block_out_channels", [1, 2, 3, 4]))
    scale = 2 ** (levels - 1)
    den = configs.get(denoiser, {})
    heads, head_dim = den.get("num_attention_heads"), den.get("attention_head_dim")
    if isinstance(heads, int) and isinstance(head_dim, int):
        width = heads * head_dim  # a DiT: tokens x inner dim
    else:  # a UNet (attention_head_dim may be a list): its widest level
        width = int(max(den.get("block_out_channels") or [1280]))
    patch = int(den.get("patch_size", 1) or 1) * (2 if components[denoiser].class_name.startswith("Flux") else 1)
    tokens = (shape.height // scale // patch) * (shape.width // scale // patch)
    if "joint_attention_dim" in den or "caption_projection_dim" in den:
        tokens += shape.text_tokens
    batch = shape.batch * shape.cfg_batch
    out["activations.denoiser"] = batch * tokens * width * dtype_bytes * ACTIVATION_BYTES_PER_TOKEN_WIDTH
    if vae:
        channels = int(vae.get("block_out_channels", [128])[0])
        out["activations.vae_decode"] = (shape.batch * shape.height * shape.width * channels * dtype_bytes
                                         * VAE_DECODE_MAPS)
    text = 0
    for name, cfg in configs.items():
        if name.startswith("text_encoder"):
            d = int(cfg.get("d_model") or cfg.get("hidden_size") or 0)
            seq = shape.text_tokens if "d_model" in cfg else int(cfg.get("max_position_embeddings", 77))
            scores = 0
            if "d_model" in cfg:  # T5: explicit attention scores + position bias + softmax, float32
                scores = shape.batch * int(cfg.get("num_heads", 0)) * seq * seq * 4 * 3
            text = max(text, shape.batch * seq * d * dtype_bytes * TEXT_ENCODER_MAPS + scores)
    out["activations.text_encoders"] = text
    return out


def memory_plan(recipe: Recipe, device: str, components: dict[str, ComponentBytes], models: dict[str, Any],
                configs: dict[str, Any], shape: RunShape, denoiser: str) -> MemoryPlan:
    """Predicted memory of ``recipe`` on ``device`` from its components' exact bytes."""
    mem = recipe.memory
    weights = sum(c.stored_bytes for c in components.values())
    dtype_bytes = 4 if recipe.dtype == "float32" else 2
    modelled = _activations(configs, components, shape, dtype_bytes, denoiser)
    notes: list[str] = []
    cuda = device.startswith("cuda")
    modelled["process"] = CUDA_CONTEXT_BYTES if cuda else CPU_PROCESS_BYTES
    resident, peak_weights = weights, weights
    if mem.offload == "model" and cuda:
        resident = 0
        peak_weights = max(c.stored_bytes for c in components.values())
        notes.append("model offload: one component on the GPU at a time (the largest counts)")
    elif mem.offload == "sequential" and cuda:
        resident = 0
        peak_weights = max(_largest_group(models[n], "group-leaf", 1) * _stored_fraction(c)
                           for n, c in components.items())
        notes.append("sequential offload: one layer on the GPU at a time")
    elif mem.offload.startswith("group") and (cuda or mem.offload_to_disk):
        groups = {n: int(_largest_group(models[n], mem.offload, mem.blocks_per_group) * _stored_fraction(c))
                  for n, c in components.items()}
        resident = 0
        peak_weights = max(groups.values()) * (2 if mem.use_stream else 1)
        if not cuda:
            modelled["call.offload_page_cache"] = int(weights * DISK_OFFLOAD_RESIDENT_FRACTION)
            notes.append("group offload to disk: weights are read back from files; part of their pages "
                         "stay resident (modelled)")
        else:
            notes.append("group offload: one group on the GPU at a time" + (" (two with stream)" if mem.use_stream else ""))
    elif mem.offload.startswith("group"):
        notes.append("group offload CPU->CPU keeps every weight in RAM: no saving")
    if not cuda:
        _cpu_pages(recipe, components, modelled)
        if mem.offload == "none" or (mem.offload.startswith("group") and not mem.offload_to_disk):
            # Unquantized components stay memory-mapped after loading; a call pages them in.
            resident = sum(c.stored_bytes for c in components.values() if c.quant)
    per_layer = [c for c in components.values() if _traits(c).dequantizes_layer]
    if per_layer and models:
        # GGUF dequantizes each layer's weight to the compute dtype as it runs it.
        modelled["call.gguf_dequantized_layer"] = max(_largest_group(models[c.name], "group-leaf", 1)
                                                      for c in per_layer)
    unpacked = [c for c in components.values() if _dequantized_copies(c)]
    if unpacked and models and not cuda:
        # On CPU these run each layer through full-precision copies of its weight (LLM.int8's
        # float32 dequantization, quanto's unpacked 4/2-bit values): fitted to CPU-FACTS' peak
        # ratios on zoo:flux-dev-slice (bnb-int8 1.49x bf16, quanto-int4 1.27x).
        modelled["call.dequantized_layer"] = max(
            _largest_group(models[c.name], "group-leaf", 1) // max(models[c.name].dtype.itemsize, 1)
            * _dequantized_copies(c) for c in unpacked)
    # Quantizing on load works one layer at a time in float32 temporaries (about three of them: measured
    # 507 MiB for bnb-nf4 on zoo:flux-dev-slice, whose largest layer has 37.7M weights).
    converted = [models[c.name] for c in components.values()
                 if _traits(c).float32_temporaries and c.name in models]
    if converted and not cuda:
        largest = max(_largest_group(m, "group-leaf", 1) // max(m.dtype.itemsize, 1) for m in converted)
        modelled["load_transient"] = largest * 4 * LOAD_TEMPORARIES
    own_files = [c for c in components.values() if _traits(c).own_file]
    if own_files and not cuda:
        # The .gguf file is memory-mapped while its blocks are copied out (measured on zoo:flux-dev-slice).
        modelled["load_transient"] = modelled.get("load_transient", 0) + sum(c.stored_bytes for c in own_files)
    return MemoryPlan(weights_bytes=weights, resident_weights_bytes=int(resident),
                      peak_weights_bytes=int(peak_weights), modelled=modelled, notes=tuple(notes))


def _cpu_pages(recipe: Recipe, components: dict[str, ComponentBytes], modelled: dict[str, int]) -> None:
    """CPU RSS beyond the tensors: backend imports, source pages read while quantizing, a call's code."""
    from diffquant.backends import recipe_backends

    imports = sum(backend.memory.import_bytes for backend in recipe_backends(recipe))
    if imports:
        modelled["resident.backend_import"] = imports
    sources = sum(c.plain_bytes for c in components.values() if _traits(c).reads_source)
    if sources:
        # read while quantizing, then released: loading drops the bf16 file pages of what it
        # quantized (issue 10), so they count in the load peak, not after loading
        modelled["load_source_pages"] = sources
    modelled["call.runtime"] = CPU_CALL_BYTES


def _traits(c: ComponentBytes) -> MemoryTraits:
    """The memory traits of the backend that quantized ``c`` (none for an unquantized component)."""
    from diffquant.backends import get_backend
    from diffquant.backends.base import MemoryTraits

    return get_backend(c.quant.split("-")[0]).memory if c.quant else MemoryTraits()


def _dequantized_copies(c: ComponentBytes) -> int:
    return _traits(c).cpu_dequantized_copies.get(c.quant.partition("-")[2], 0) if c.quant else 0


def run_shapes(pipeline_class: str, height: int, width: int, steps: int, batch: int,
               text_tokens: int | None) -> RunShape:
    """The shape of a call from the pipeline class and its settings."""
    cfg_batch = 2 if pipeline_class.startswith(("StableDiffusion3", "StableDiffusion")) else 1
    if text_tokens is None:
        text_tokens = 256 + 77 if pipeline_class.startswith("StableDiffusion3") else 512
    return RunShape(height=height, width=width, steps=steps, batch=batch, text_tokens=text_tokens,
                    cfg_batch=cfg_batch)


def read_configs(folder: Any, names: Sequence[str]) -> dict[str, Any]:
    import json

    out = {}
    for name in names:
        path = folder / name / "config.json"
        if path.is_file():
            out[name] = json.loads(path.read_text())
    return out
