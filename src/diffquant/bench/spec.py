"""What a benchmark run is: the settings shared by a sweep and the spec handed to one worker.

A ``RunSpec`` travels to the worker process as JSON (``python -m diffquant.bench.worker
SPEC.json``). Its identity is the *run key*: model, recipe hash, device and generation settings;
a finished run with the same key is skipped when a sweep is resumed. Runs with the same model,
device and settings share a *sweep id* - they are the ones whose numbers may be compared.
No torch import here.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from diffquant.recipes.model import Recipe

# Test-only fault injection in the worker (see worker.py): proves the parent survives its child.
FAULTS = ("abort", "sigkill", "segfault", "hang", "raise", "exit")
FAULT_PHASES = ("start", "load", "generate")


@dataclass(frozen=True)
class BenchSettings:
    """Generation and measurement settings common to every run of a sweep."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    steps: int = 4
    height: int = 64
    width: int = 64
    guidance_scale: float | None = None
    device: str = "cpu"
    repeats: int = 2  # minimum number of steady (timed) calls after the first call and warm-up
    warmup: int = 0  # extra untimed calls after the first one (e.g. for CUDA graphs)
    min_time_s: float = 0.0  # steady calls go on until they have taken this long too (0: count-based)
    processes: int = 1  # fresh worker processes per recipe, their calls pooled (bench/processes.py)
    # what the model's diffquant.json fixes (e.g. true_cfg_scale); applied by pipeline.generate
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """What makes two runs comparable (and, with the recipe, the same run)."""
        return {"prompts": list(self.prompts), "seeds": list(self.seeds), "steps": self.steps,
                "height": self.height, "width": self.width, "guidance_scale": self.guidance_scale,
                "device": self.device, "repeats": self.repeats, "warmup": self.warmup,
                # only when set, so that count-based sweeps keep the ids they had before
                **({"min_time_s": self.min_time_s} if self.min_time_s else {}),
                **({"processes": self.processes} if self.processes > 1 else {}),
                **self.pipeline_kwargs}

    def to_dict(self) -> dict[str, Any]:
        return self.identity()


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sweep_id(model: str, settings: BenchSettings) -> str:
    return _digest({"model": model, **settings.identity()})


def run_key(model: str, recipe_hash: str, settings: BenchSettings) -> str:
    return _digest({"model": model, "recipe_hash": recipe_hash, **settings.identity()})


def slug(text: str, limit: int = 60) -> str:
    """A file-name-safe form of a recipe or model name."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.")
    return (out or "run")[:limit]


@dataclass
class RunSpec:
    """Everything one worker process needs; serialised as JSON.

    The recipe travels as data: ``recipe_dict`` (``Recipe.to_dict``) and its ``recipe_hash``; the
    worker rebuilds the Recipe from the dict, checks the hash, and hands the hash back, which the
    parent compares with the planned one. ``recipe`` (the canonical string) is for people and logs;
    a spec built by hand with only a string is parsed once, by the worker."""

    model: str
    recipe: str
    device: str
    prompts: list[str]
    seeds: list[int]
    steps: int
    height: int
    width: int
    guidance_scale: float | None
    result_path: str
    image_dir: str
    repeats: int = 2
    warmup: int = 0
    min_time_s: float = 0.0
    save_images: bool = True
    quant_cache_dir: str | None = None
    sample_interval_s: float = 0.02
    fault: str | None = None  # test-only: one of FAULTS
    fault_phase: str = "start"  # test-only: one of FAULT_PHASES
    extra: dict[str, Any] = field(default_factory=dict)
    recipe_dict: dict[str, Any] | None = None
    recipe_hash: str | None = None

    @classmethod
    def build(cls, model: str, recipe: str | Recipe, settings: BenchSettings, *, result_path: Path,
              image_dir: Path, **kwargs: Any) -> RunSpec:
        """A spec for ``recipe`` (a Recipe, or a string parsed here, in the parent)."""
        from diffquant.recipes import load_recipe

        parsed = load_recipe(recipe)
        return cls(model=model, recipe=parsed.name, recipe_dict=parsed.to_dict(), recipe_hash=parsed.hash,
                   device=settings.device, prompts=list(settings.prompts),
                   seeds=list(settings.seeds), steps=settings.steps, height=settings.height,
                   width=settings.width, guidance_scale=settings.guidance_scale,
                   repeats=settings.repeats, warmup=settings.warmup, min_time_s=settings.min_time_s,
                   result_path=str(result_path),
                   image_dir=str(image_dir), **kwargs)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown run-spec fields: {sorted(unknown)}")
        return cls(**data)

    def write(self, path: Path) -> Path:
        path.write_text(self.to_json(), encoding="utf-8")
        return path
