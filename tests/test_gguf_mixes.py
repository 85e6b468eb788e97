"""Named GGUF mixes: the writer types each role as the mix says, and the recipe token loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffquant.gguf_writer.mixes import MIXES
from diffquant.gguf_writer.policy import TypePolicy

SHAPE = (256, 256)


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_each_role_gets_the_mix_type_and_the_rest_the_base(mix: str) -> None:
    base, roles = MIXES[mix]
    policy = TypePolicy(mix)
    names = {"attn_v": "transformer_blocks.0.attn.to_v.weight",
             "attn_qkv": "transformer_blocks.0.attn.to_q.weight",
             "attn_output": "transformer_blocks.0.attn.to_out.0.weight",
             "ffn_down": "transformer_blocks.0.ff.net.2.weight"}
    for role, name in names.items():
        assert policy.choose(name, SHAPE, "BF16").qtype == roles.get(role, base), (role, name)
    # single blocks' q/k are not attn_qkv (BFL's linear1 is not bumped by the patch either)
    assert policy.choose("single_transformer_blocks.0.attn.to_q.weight", SHAPE, "BF16").qtype == base
    assert policy.choose("single_transformer_blocks.0.proj_mlp.weight", SHAPE, "BF16").qtype == base
    # the embedders keep high precision as for every type; a --keep rule wins over the mix
    assert policy.choose("x_embedder.weight", SHAPE, "BF16").qtype == "BF16"
    keep = TypePolicy(mix, "transformer_blocks.0.attn.to_v.*=Q8_0")
    assert keep.choose(names["attn_v"], SHAPE, "BF16").qtype == "Q8_0"


def test_mix_recipe_loads_and_costs_more_than_its_base(tmp_path: Path) -> None:
    from diffquant.gguf_writer import export_gguf
    from diffquant.inspect import component_stats
    from diffquant.pipeline import load_pipeline

    sizes = {}
    for recipe in ("gguf-q4_k", "gguf-q4_k_m"):
        stats = component_stats(load_pipeline("zoo:shapes", recipe, device="cpu", quant_cache_dir=tmp_path))
        sizes[recipe] = stats["transformer"].weight_bytes
    assert sizes["gguf-q4_k"] < sizes["gguf-q4_k_m"]
    from diffquant.components import resolve_model

    result = export_gguf(resolve_model("zoo:shapes"), tmp_path / "m.gguf", "q4_k_m")
    assert result.tensor_types["transformer_blocks.0.attn.to_v.weight"] == "Q6_K"
    assert result.tensor_types["transformer_blocks.0.attn.to_q.weight"] == "Q5_K"
    assert result.tensor_types["single_transformer_blocks.0.proj_mlp.weight"] == "Q4_K"
