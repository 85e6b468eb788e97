"""Which linear layers a recipe quantizes, and how they are grouped for a sensitivity sweep."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

GRANULARITIES = ("layer", "block", "kind")
_INDEX = re.compile(r"\.(\d+)(?=\.|$)")
# "transformer_blocks.3.attn.to_q" -> block "transformer_blocks.3"; top-level modules are their own block.
_BLOCK = re.compile(r"^(.*?\.\d+)(?:\.|$)")


@dataclass(frozen=True)
class Group:
    name: str
    modules: tuple[str, ...]  # full module names inside the denoiser


def quantized_linears(model: Any, spec: Any, backend: Any) -> list[str]:
    """Names of the ``nn.Linear`` layers of ``model`` that ``spec`` quantizes, in model order."""
    import torch

    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not backend.keeps_precise(spec, name, model)]


def group_key(name: str, granularity: str) -> str:
    if granularity == "layer":
        return name
    if granularity == "block":
        match = _BLOCK.match(name)
        return match.group(1) if match else name
    if granularity == "kind":
        return _INDEX.sub(".*", name)  # transformer_blocks.*.attn.to_q
    raise ValueError(granularity)


def make_groups(names: list[str], granularity: str) -> list[Group]:
    """Groups in first-appearance order; every name in exactly one group."""
    from diffquant.errors import unknown_choice

    if granularity not in GRANULARITIES:
        raise unknown_choice("sensitivity granularity", granularity, GRANULARITIES,
                             hint="--groups layer (each linear), block (each transformer block) or kind "
                                  "(the same layer across blocks)")
    grouped: dict[str, list[str]] = {}
    for name in names:
        grouped.setdefault(group_key(name, granularity), []).append(name)
    return [Group(key, tuple(members)) for key, members in grouped.items()]
