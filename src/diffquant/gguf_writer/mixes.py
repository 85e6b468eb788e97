"""Named GGUF mixes (``Q4_K_M`` …): the base K-quant type plus one step up for the layers that
llama.cpp's ``llama_tensor_get_type`` bumps, mapped onto diffusers' FLUX/SD3 names the way
ComfyUI-GGUF's ``tools/lcpp.patch`` maps them (``.to_v.weight`` -> attn_v, ``attn.qkv`` -> attn_qkv).

Roles (glob patterns over diffusers tensor names):
- attn_v: every ``attn.to_v`` and ``attn.add_v_proj``;
- attn_qkv: the double blocks' q/k projections (``attn.qkv`` in BFL names; v is attn_v);
- attn_output: ``attn.to_out.0`` and ``attn.to_add_out``;
- ffn_down: ``ff.net.2`` and ``ff_context.net.2`` (llama.cpp's ffn_down).
Simplification, stated: llama.cpp bumps attn_v/ffn_down only in some layers (``use_more_bits``:
the first and last eighth and every third layer between); these mixes bump every layer of the
role, so they cost a little more than llama.cpp's and never less.
"""

from __future__ import annotations

ROLES: dict[str, tuple[str, ...]] = {
    "attn_v": ("*attn.to_v.*", "*attn.add_v_proj.*"),
    "attn_qkv": ("transformer_blocks.*.attn.to_q.*", "transformer_blocks.*.attn.to_k.*",
                 "transformer_blocks.*.attn.add_q_proj.*", "transformer_blocks.*.attn.add_k_proj.*"),
    "attn_output": ("*attn.to_out.0.*", "*attn.to_add_out.*"),
    "ffn_down": ("*.ff.net.2.*", "*.ff_context.net.2.*"),
}

# mix -> (base type, {role: type}); from llama.cpp's llama_tensor_get_type for each ftype.
MIXES: dict[str, tuple[str, dict[str, str]]] = {
    "Q2_K_M": ("Q2_K", {"attn_v": "Q3_K", "attn_output": "Q3_K", "ffn_down": "Q3_K"}),  # llama's "Q2_K"
    "Q3_K_S": ("Q3_K", {}),
    "Q3_K_M": ("Q3_K", {"attn_v": "Q4_K", "attn_qkv": "Q4_K", "attn_output": "Q4_K", "ffn_down": "Q4_K"}),
    "Q3_K_L": ("Q3_K", {"attn_v": "Q5_K", "attn_qkv": "Q4_K", "attn_output": "Q5_K", "ffn_down": "Q5_K"}),
    "Q4_K_S": ("Q4_K", {"attn_v": "Q5_K"}),
    "Q4_K_M": ("Q4_K", {"attn_v": "Q6_K", "attn_qkv": "Q5_K", "ffn_down": "Q6_K"}),
    "Q5_K_S": ("Q5_K", {}),
    "Q5_K_M": ("Q5_K", {"attn_v": "Q6_K", "attn_qkv": "Q6_K", "ffn_down": "Q6_K"}),
}


def is_mix(name: str) -> bool:
    return name.strip().upper() in MIXES


def mix_rules(name: str) -> tuple[str, list[tuple[str, str]]]:
    """(base type, [(pattern, type)]) of a named mix, e.g. 'q4_k_m'."""
    base, roles = MIXES[name.strip().upper()]
    return base, [(pattern, qtype) for role, qtype in roles.items() for pattern in ROLES[role]]
