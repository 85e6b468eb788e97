"""The parts of a recipe: per-component quantization (``QuantSpec``), memory options (``MemorySpec``),
compile options (``CompileSpec``). The lowest floor of ``recipes/``: it imports nothing of the
package, so validation, the dict form and the string form can all build on it. No torch import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

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


class RecipeFields(Protocol):
    """What the checks read of a whole recipe (``model.Recipe`` has these fields)."""

    quant: tuple[QuantSpec, ...]
    memory: MemorySpec
    compile: CompileSpec
    dtype: str


def quant_token(spec: QuantSpec) -> str:
    from diffquant.recipes import catalog as cat  # the catalogue names each backend's own tokens

    backend = cat.BACKENDS.get(spec.backend) if isinstance(spec.backend, str) else None
    return backend.token_for(spec.qtype) if backend else f"{spec.backend}-{spec.qtype}"
