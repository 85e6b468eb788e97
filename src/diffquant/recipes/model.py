"""Recipe data model: frozen dataclasses with a schema version and a stable content hash.

A recipe says, per pipeline component, how to quantize it (``QuantSpec``), plus memory options
(``MemorySpec``) and compile options (``CompileSpec``). No torch import here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
DEFAULT_TARGET = "default"  # the denoiser and the large text encoder of whatever pipeline is loaded

OptionValue = str | int | float | bool


@dataclass(frozen=True)
class QuantSpec:
    """How one component (or the default components) is quantized."""

    backend: str  # "bnb" | "torchao" | "quanto" | "gguf" | "layerwise"
    qtype: str  # backend-specific type, e.g. "nf4", "int8wo", "q4_k", "e4m3"
    target: str = DEFAULT_TARGET  # component name, or "default"
    options: tuple[tuple[str, OptionValue], ...] = ()  # sorted (key, value) pairs
    skip_modules: tuple[str, ...] = ()  # module-name patterns left unquantized

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "type": self.qtype, "target": self.target,
                "options": dict(self.options), "skip_modules": list(self.skip_modules)}


@dataclass(frozen=True)
class MemorySpec:
    """Memory options applied after loading."""

    offload: str = "none"  # none | model | sequential | group-leaf | group-block
    blocks_per_group: int = 1  # group-block only
    use_stream: bool = False  # group offload: overlap transfers with compute (needs CUDA)
    offload_to_disk: bool = False  # group offload: keep offloaded weights in files, not RAM
    vae_tiling: bool = False
    vae_slicing: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"offload": self.offload, "blocks_per_group": self.blocks_per_group,
                "use_stream": self.use_stream, "offload_to_disk": self.offload_to_disk,
                "vae_tiling": self.vae_tiling, "vae_slicing": self.vae_slicing}


@dataclass(frozen=True)
class CompileSpec:
    """torch.compile of the denoiser (or the named components)."""

    enabled: bool = False
    mode: str = "default"
    fullgraph: bool = False
    components: tuple[str, ...] = ("denoiser",)
    regional: bool = False  # compile only the repeated blocks (diffusers' compile_repeated_blocks)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"enabled": self.enabled, "mode": self.mode, "fullgraph": self.fullgraph,
                                "components": list(self.components)}
        if self.regional:  # only when set: every other recipe keeps its hash
            data["regional"] = True
        return data


@dataclass(frozen=True)
class Recipe:
    """A complete, hashable description of how to load and run a pipeline."""

    quant: tuple[QuantSpec, ...] = ()
    memory: MemorySpec = field(default_factory=MemorySpec)
    compile: CompileSpec = field(default_factory=CompileSpec)
    dtype: str = "bfloat16"  # compute / unquantized weights dtype
    schema_version: int = SCHEMA_VERSION

    @property
    def name(self) -> str:
        """The canonical recipe string (parses back to an equal Recipe)."""
        from diffquant.recipes.parse import format_recipe

        return format_recipe(self)

    @property
    def hash(self) -> str:
        """Stable content hash: equal recipes hash equal across processes and versions of Python."""
        payload = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def is_quantized(self) -> bool:
        return bool(self.quant)

    def spec_for(self, target: str) -> QuantSpec | None:
        for spec in self.quant:
            if spec.target == target:
                return spec
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": self.schema_version, "dtype": self.dtype,
                "quant": [q.to_dict() for q in self.quant],
                "memory": self.memory.to_dict(), "compile": self.compile.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        from diffquant.recipes.dict_form import recipe_from_dict

        return recipe_from_dict(data)

    def __str__(self) -> str:
        return self.name
