"""Tensor-name layouts of the written GGUF file.

``diffusers``: the model's own state-dict names, one GGUF tensor per parameter. diffusers'
``from_single_file(..., config=...)`` loads such a file without any conversion.

``bfl``: FLUX's original black-forest-labs names (what ComfyUI, stable-diffusion.cpp and the
community FLUX GGUFs use). This is the exact inverse of diffusers'
``convert_flux_transformer_checkpoint_to_diffusers``: q/k/v are stacked back into ``qkv``, the
single blocks' q/k/v/mlp into ``linear1``, and the final AdaLN's two halves are swapped back to
(shift, scale). Every merge and swap is along dim 0, i.e. whole rows, and GGUF quantizes each
row on its own, so each part is quantized separately and the bytes are concatenated: identical
to quantizing the merged tensor, without ever holding it in float32.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from diffquant.errors import DiffquantError, unknown_choice

LAYOUTS = ("diffusers", "bfl")
BFL_INNER_DIM = 3072  # diffusers' converter hard-codes FLUX's width when splitting linear1


@dataclass(frozen=True)
class Part:
    """Rows ``[start, stop)`` of source tensor ``source`` (``stop`` None: to the end)."""

    source: str
    start: int = 0
    stop: int | None = None


@dataclass(frozen=True)
class OutTensor:
    """One tensor of the output file, made of source rows stacked in order."""

    name: str
    shape: tuple[int, ...]
    parts: tuple[Part, ...]

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.source for p in self.parts))


Shapes = Mapping[str, tuple[int, ...]]


def plan_layout(layout: str, class_name: str, shapes: Shapes) -> tuple[list[OutTensor], list[str]]:
    """Map source tensors (diffusers names -> shapes) to output tensors. Returns the plan and
    warnings for the user."""
    if layout not in LAYOUTS:
        raise unknown_choice("GGUF key layout", layout, LAYOUTS)
    if layout == "diffusers":
        return [OutTensor(name, tuple(shape), (Part(name),)) for name, shape in shapes.items()], []
    if class_name != "FluxTransformer2DModel":
        raise DiffquantError(
            f"The 'bfl' key layout exists only for FLUX transformers, not {class_name}.",
            hint="use --layout diffusers (loadable with from_single_file(..., config=...))")
    return _plan_bfl(shapes)


# diffusers name (inside a block) -> BFL name; the converter's renames, inverted.
_DOUBLE_RENAMES = {
    "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
    "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
    "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
    "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
}
_DOUBLE_MERGES = {  # BFL name <- diffusers names stacked along dim 0
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_SINGLE_RENAMES = {
    "norm.linear": "modulation.lin",
    "attn.norm_q.weight": "norm.query_norm.scale", "attn.norm_k.weight": "norm.key_norm.scale",
    "proj_out": "linear2",
}
_SINGLE_MERGES = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
_TOP_RENAMES = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in", "x_embedder": "img_in", "proj_out": "final_layer.linear",
}
_SWAPPED = ("norm_out.linear", "final_layer.adaLN_modulation.1")  # halves (scale, shift) <-> (shift, scale)

_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")


def _plan_bfl(shapes: Shapes) -> tuple[list[OutTensor], list[str]]:
    out: list[OutTensor] = []
    used: set[str] = set()

    def add(name: str, parts: list[Part]) -> None:
        for p in parts:
            used.add(p.source)
        rows = 0
        cols: tuple[int, ...] | None = None
        for p in parts:
            shape = tuple(shapes[p.source])
            stop = shape[0] if p.stop is None else p.stop
            rows += stop - p.start
            if cols is not None and shape[1:] != cols:
                raise DiffquantError(f"Cannot stack {p.source} {shape} into {name}: widths differ.")
            cols = shape[1:]
        out.append(OutTensor(name, (rows, *(cols or ())), tuple(parts)))

    def rename(src: str, dst: str) -> None:
        if src in shapes:
            add(dst, [Part(src)])

    blocks = sorted({(m.group(1), int(m.group(2))) for m in map(_BLOCK.match, shapes) if m})

    for module, bfl in _TOP_RENAMES.items():
        for param in ("weight", "bias"):
            rename(f"{module}.{param}", f"{bfl}.{param}")
    for kind, i in blocks:
        prefix = f"{kind}.{i}."
        bfl_prefix = f"double_blocks.{i}." if kind == "transformer_blocks" else f"single_blocks.{i}."
        renames = _DOUBLE_RENAMES if kind == "transformer_blocks" else _SINGLE_RENAMES
        merges = _DOUBLE_MERGES if kind == "transformer_blocks" else _SINGLE_MERGES
        for src, dst in renames.items():
            if src.endswith(".weight"):  # a norm scale: renamed as a whole
                rename(prefix + src, bfl_prefix + dst)
                continue
            for param in ("weight", "bias"):
                rename(f"{prefix}{src}.{param}", f"{bfl_prefix}{dst}.{param}")
        for dst, srcs in merges.items():
            for param in ("weight", "bias"):
                parts = [f"{prefix}{s}.{param}" for s in srcs]
                present = [p for p in parts if p in shapes]
                if present and len(present) != len(parts):
                    missing = sorted(set(parts) - set(present))
                    raise DiffquantError(f"Cannot build {bfl_prefix}{dst}.{param}: missing {missing}.")
                if present:
                    add(f"{bfl_prefix}{dst}.{param}", [Part(p) for p in parts])
    src, dst = _SWAPPED
    for param in ("weight", "bias"):
        name = f"{src}.{param}"
        if name in shapes:
            half = shapes[name][0] // 2
            add(f"{dst}.{param}", [Part(name, half, None), Part(name, 0, half)])

    unmapped = sorted(set(shapes) - used)
    if unmapped:
        raise DiffquantError(
            f"{len(unmapped)} tensor(s) have no place in the BFL layout, e.g. {unmapped[:3]}: "
            "this FLUX variant is not supported there.",
            hint="use --layout diffusers, which keeps every tensor under its own name")
    warnings = []
    width = shapes.get("x_embedder.weight", (BFL_INNER_DIM,))[0]
    if width != BFL_INNER_DIM:
        warnings.append(
            f"BFL layout at width {width}: diffusers' FLUX converter assumes width {BFL_INNER_DIM}, so "
            "diffusers cannot load this file (ComfyUI-style loaders that read shapes can); "
            "use --layout diffusers for diffusers.")
    return out, warnings
