"""Load a pipeline with a recipe applied, and generate from it. The CLI, the Python API and the
benchmark worker all go through these functions."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffquant.errors import BackendUnavailable, DiffquantError
from diffquant.load_record import LoadInfo, load_info
from diffquant.recipes import Recipe, load_recipe
from diffquant.settings import GenerationSettings, default_settings
from diffquant.zoo.meta import MODEL_PIPELINE_KWARGS  # noqa: F401 - what diffquant.json may fix; importable here

__all__ = ["GenerationOutput", "GenerationSettings", "LoadInfo", "default_device", "default_settings", "generate",
           "load_info", "load_pipeline"]


@dataclass
class GenerationOutput:
    image: Any  # PIL.Image.Image
    latents: Any  # torch.Tensor, final latents as the pipeline holds them (float32, CPU)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(model: str, recipe: str | Recipe = "bf16", *, device: str | None = None,
                  quant_cache_dir: Path | None = None, allow_pickle: bool = False) -> Any:
    """Load ``model`` (Hub id, local folder or zoo:NAME) with ``recipe`` applied, ready to generate.

    With ``quant_cache_dir``, quantized weights of serialisable backends are saved there on the first
    load (keyed by model, recipe and library versions) and loaded from there afterwards.
    ``allow_pickle`` lets an export that holds pickle files load (they can run code: trust the source).
    """
    from diffquant.backends import notes_for, why_not_here
    from diffquant.components import denoiser_name, read_components, resolve_model, resolve_targets
    from diffquant.memory import apply_compile, place_and_offload
    from diffquant.quiet import quiet_libraries
    from diffquant.serialize import is_quantized_export, save_quantized

    quiet_libraries()
    started = time.perf_counter()
    recipe = load_recipe(recipe)
    device = device or default_device()
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise DiffquantError(f"Unknown device {device!r}.", choices=["cpu", "cuda"], given=device)
    reason = why_not_here(recipe, "cuda" if device.startswith("cuda") else device)
    if reason:
        raise BackendUnavailable(f"Recipe {recipe.name!r} cannot run on {device}: {reason}",
                                 hint="run `diffquant recipes` to see what runs on this machine")
    model_dir = resolve_model(model)
    if is_quantized_export(model_dir):
        return _load_export(model, model_dir, recipe, device, started, allow_pickle)
    cached = _quant_cache_folder(quant_cache_dir, model_dir, recipe, device)
    if cached is not None and is_quantized_export(cached):
        # diffquant's own cache, written by this user: pickles there (old torchao) are trusted.
        pipe = _load_export(model, cached, _without_quant(recipe), device, started, True)
        info = load_info(pipe)
        info.recipe, info.model_dir = recipe, model_dir
        info.notes = notes_for(recipe, device) + [f"quantized weights loaded from the cache {cached}"]
        return pipe
    components = read_components(model_dir)
    from diffquant.file_pages import in_own_arena

    pipe, quantized, cache_hits = in_own_arena(_load_quantized, model_dir, components, recipe, device,
                                               quant_cache_dir)
    info = LoadInfo(model_ref=model, model_dir=model_dir, recipe=recipe, device=device, quantized=quantized,
                    quant_cache_used=bool(cache_hits) and all(cache_hits), notes=notes_for(recipe, device))
    pipe._diffquant_load_info = info
    info.counters.update(_release_weight_files(pipe, resolve_targets(recipe, components)))
    if cached is not None:
        save_quantized(pipe, cached, link_unquantized=True, allow_pickle=True)
        info.notes.append(f"quantized weights saved to the cache {cached}")
    info.notes += place_and_offload(pipe, recipe, device)
    info.notes += apply_compile(pipe, recipe, denoiser_name(components))
    info.load_seconds = time.perf_counter() - started
    return pipe


def _load_quantized(model_dir: Path, components: dict[str, Any], recipe: Recipe, device: str,
                    quant_cache_dir: Path | None) -> tuple[Any, dict[str, str], list[bool]]:
    """Load the pipeline on the CPU/GPU with every component quantized as the recipe says."""
    import torch
    from diffusers import DiffusionPipeline

    from diffquant.backends import get_backend
    from diffquant.backends.base import ComponentContext
    from diffquant.components import denoiser_name, resolve_targets

    targets = resolve_targets(recipe, components)
    dtype = getattr(torch, recipe.dtype)
    denoiser = denoiser_name(components)
    quant_mapping: dict[str, Any] = {}
    loaded: dict[str, Any] = {}
    cache_hits: list[bool] = []
    for name, spec in targets.items():
        comp = components[name]
        ctx = ComponentContext(name=name, library=comp.library, class_name=comp.class_name,
                               model_dir=str(model_dir), dtype=dtype, device=device,
                               is_denoiser=name == denoiser)
        backend = get_backend(spec.backend)
        config = backend.load_config(spec, ctx)
        if config is not None:
            quant_mapping[name] = config
            continue
        hit = backend.cached_file(spec, ctx, quant_cache_dir)
        if hit is not None:
            cache_hits.append(hit)
        loaded[name] = backend.load_component(spec, ctx, quant_cache_dir)
    kwargs: dict[str, Any] = {"torch_dtype": dtype, **loaded}
    if quant_mapping:
        from diffusers.quantizers import PipelineQuantizationConfig

        kwargs["quantization_config"] = PipelineQuantizationConfig(quant_mapping=quant_mapping)
    pipe = DiffusionPipeline.from_pretrained(str(model_dir), **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe, {n: f"{s.backend}-{s.qtype}" for n, s in targets.items()}, cache_hits


def _release_weight_files(pipe: Any, targets: dict[str, Any]) -> dict[str, int]:
    """Quantized components let go of the bf16 files they were read from (see file_pages.py);
    a backend whose weights are a file of its own (GGUF) keeps it: that file is its weights."""
    from diffquant.backends import get_backend
    from diffquant.file_pages import release_weight_files, trim_heap

    tensors = nbytes = 0
    for name, spec in targets.items():
        module = getattr(pipe, name, None)
        if module is None or get_backend(spec.backend).memory.own_file:
            continue
        released = release_weight_files(module)
        tensors, nbytes = tensors + released.tensors, nbytes + released.nbytes
    trimmed = trim_heap() if targets else False  # the quantizers' freed bf16 temporaries
    return {"load.released_file_tensors": tensors, "load.released_file_bytes": nbytes,
            "load.heap_trimmed": int(trimmed)}


def _without_quant(recipe: Recipe) -> Recipe:
    return Recipe(memory=recipe.memory, compile=recipe.compile, dtype=recipe.dtype)


def _quant_cache_folder(root: Path | None, model_dir: Path, recipe: Recipe, device: str) -> Path | None:
    """Where this model+recipe's quantized pipeline is cached, or None when not cacheable (no backend
    of the recipe is slow enough to quantize to be worth it: ``cache_quantized``)."""
    from diffquant.backends import get_backend

    if root is None or not any(get_backend(s.backend).cache_quantized for s in recipe.quant):
        return None
    import hashlib

    from diffquant.versions import library_versions

    weights = sorted((str(p.relative_to(model_dir)), p.stat().st_size, int(p.stat().st_mtime))
                     for p in model_dir.rglob("*.safetensors"))
    key = json.dumps({"model": str(model_dir.resolve()), "weights": weights, "dtype": recipe.dtype,
                      "quant": [q.to_dict() for q in recipe.quant], "versions": library_versions(),
                      "device": "cuda" if device.startswith("cuda") else device}, sort_keys=True)
    return Path(root) / "pipelines" / hashlib.sha256(key.encode()).hexdigest()[:20]


def _load_export(model: str, model_dir: Path, recipe: Recipe, device: str, started: float,
                 allow_pickle: bool = False) -> Any:
    """Load a folder written by ``diffquant quantize``; the recipe may add memory/compile options only."""
    import torch
    from diffusers import DiffusionPipeline

    from diffquant.components import denoiser_name, read_components
    from diffquant.memory import apply_compile, place_and_offload
    from diffquant.serialize import MARKER, load_saved_components

    meta = json.loads((model_dir / MARKER).read_text())
    if recipe.quant:
        raise DiffquantError(f"{str(model_dir)!r} is already quantized with {meta['recipe_name']!r}; "
                             f"the recipe {recipe.name!r} would quantize it again.",
                             hint="load it with recipe 'bf16' (plus memory/compile options), or quantize "
                                  "the original model")
    stored = Recipe.from_dict(meta["recipe"])
    from diffquant.backends import finish_loading, prepare_loading

    prepare_loading(stored)  # e.g. sdnq registers itself with transformers
    dtype = getattr(torch, stored.dtype)
    loaded = load_saved_components(model_dir, dtype, device, allow_pickle=allow_pickle)
    pipe = DiffusionPipeline.from_pretrained(str(model_dir), torch_dtype=dtype, **loaded)
    finish_loading(pipe, model_dir, stored)  # e.g. sdnq's float32 scales, rounded by the loaders
    pipe.set_progress_bar_config(disable=True)
    combined = Recipe(quant=stored.quant, memory=recipe.memory, compile=recipe.compile, dtype=stored.dtype)
    notes = place_and_offload(pipe, combined, device)
    notes += apply_compile(pipe, combined, denoiser_name(read_components(model_dir)))
    pipe._diffquant_load_info = LoadInfo(
        model_ref=model, model_dir=model_dir, recipe=combined, device=device,
        quantized={n: f for n, f in meta["components"].items() if f != "native"},
        quant_cache_used=True, load_seconds=time.perf_counter() - started,
        notes=notes + [f"loaded a diffquant export of {meta['source_model']} ({meta['recipe_name']})"])
    return pipe


def generate(pipe: Any, prompt: str, *, seed: int, steps: int | None = None, height: int | None = None,
             width: int | None = None, guidance_scale: float | None = None,
             step_callback: Callable[[int], None] | None = None) -> GenerationOutput:
    """One image for ``prompt`` with a seeded CPU generator (same noise on every device)."""
    import torch

    info = getattr(pipe, "_diffquant_load_info", None)
    defaults = default_settings(info.model_ref) if info else GenerationSettings(None, None, None, None)
    captured: dict[str, Any] = {}

    def on_step_end(_pipe: Any, step: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        captured["latents"] = tensors["latents"]
        if step_callback is not None:
            step_callback(step)
        return tensors

    kwargs: dict[str, Any] = {
        "prompt": prompt, "generator": torch.Generator("cpu").manual_seed(seed),
        "callback_on_step_end": on_step_end, "callback_on_step_end_tensor_inputs": ["latents"],
    }
    kwargs.update(defaults.pipeline_kwargs)
    for key, value, default in (("num_inference_steps", steps, defaults.steps), ("height", height, defaults.height),
                                ("width", width, defaults.width),
                                ("guidance_scale", guidance_scale, defaults.guidance_scale)):
        if value is not None or default is not None:
            kwargs[key] = value if value is not None else default
    _check_size(pipe, kwargs.get("height"), kwargs.get("width"))
    # no_grad, not inference_mode: quanto int4 fails under inference_mode ("Cannot set version_counter").
    with torch.no_grad():
        result = pipe(**kwargs)
    return GenerationOutput(image=result.images[0], latents=captured["latents"].detach().float().cpu())


def _check_size(pipe: Any, height: int | None, width: int | None) -> None:
    factor = getattr(pipe, "vae_scale_factor", 8) * 2
    for label, value in (("height", height), ("width", width)):
        if value is not None and (value <= 0 or value % factor):
            raise DiffquantError(f"Image {label} {value} is not a positive multiple of {factor} for this "
                                 "pipeline.", hint=f"use e.g. {max(factor, (value or 0) // factor * factor)}")
