"""A tiny Stable Diffusion 3 pipeline with seeded random weights (zoo entry ``tiny-sd3``).

Same approach as :mod:`diffquant.zoo.flux`: models described on the meta device, then materialised
one by one in bf16 and saved; offline tokenizers. The SD3 wiring constraints it respects:

- the two CLIPs' hidden states are concatenated and zero-padded to the T5 width, so
  ``clip.hidden + clip_2.hidden <= t5.d_model = joint_attention_dim``;
- their projected pooled outputs are concatenated: ``pooled_projection_dim = proj + proj_2``;
- ``in_channels`` = VAE ``latent_channels`` = 16 (SD3 patches 2x2 inside the transformer).

Sizes (8.0M params: transformer 4.4M, T5 1.5M, CLIPs 2 x 0.5M, VAE 1.0M): MMDiT with 2 layers,
4 heads x 64 (inner 256, caption projection 256), joint dim 256, pooled 256; CLIP-L-like and
CLIP-G-like encoders with hidden 128, MLP 512, projection 128, 2 layers each; T5 with d_model 256,
d_ff 512, 4 heads x 64, 2 layers, gated-gelu; the tiny 4-level VAE of ``tiny-flux`` with SD3's
latent scaling. Every transformer and T5 Linear has ``in_features`` a multiple of 256 (GGUF
K-quants' block size). A 64x64 image in 3 steps takes ~0.3 s on 2 CPU cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffquant.zoo.flux import CLIP_L, FLUX_VAE, SEED, T5_XXL, clip_config, t5_config, write_pipeline

SD3_VAE: dict[str, Any] = {**FLUX_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609}

TINY_SD3_TRANSFORMER: dict[str, Any] = {
    "sample_size": 32, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 2,
    "attention_head_dim": 64, "num_attention_heads": 4, "joint_attention_dim": 256,
    "caption_projection_dim": 256, "pooled_projection_dim": 256, "pos_embed_max_size": 64,
}
TINY_SD3_CLIP: dict[str, Any] = {**CLIP_L, "hidden_size": 128, "intermediate_size": 512,
                                 "num_attention_heads": 4, "num_hidden_layers": 2,
                                 "projection_dim": 128, "vocab_size": None}
TINY_SD3_CLIP_2: dict[str, Any] = {**TINY_SD3_CLIP, "hidden_act": "gelu"}  # CLIP-G uses gelu
TINY_SD3_T5: dict[str, Any] = {**T5_XXL, "d_model": 256, "d_ff": 512, "d_kv": 64, "num_heads": 4,
                               "num_layers": 2, "vocab_size": None}
TINY_SD3_VAE: dict[str, Any] = {**SD3_VAE, "block_out_channels": [32, 32, 64, 64],
                                "layers_per_block": 1, "sample_size": 64}


def tiny_sd3_components(vocab: tuple[int, int]) -> dict[str, torch.nn.Module]:
    """The tiny SD3 models on the meta device; ``vocab`` = (CLIP, T5) tokenizer sizes."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    with init_empty_weights(include_buffers=True):
        return {
            "transformer": SD3Transformer2DModel(**TINY_SD3_TRANSFORMER),
            "vae": AutoencoderKL(**TINY_SD3_VAE),
            "text_encoder": CLIPTextModelWithProjection(clip_config(TINY_SD3_CLIP, vocab[0])),
            "text_encoder_2": CLIPTextModelWithProjection(clip_config(TINY_SD3_CLIP_2, vocab[0])),
            "text_encoder_3": T5EncoderModel(t5_config(TINY_SD3_T5, vocab[1])),
        }


def build_tiny_sd3(folder: Path) -> None:
    """``zoo:tiny-sd3``: a ``StableDiffusion3Pipeline`` folder, 8.0M params, seeded bf16 weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from diffquant.zoo.tokenizers import clip_like_tokenizer, t5_like_tokenizer

    clip_tok, t5_tok = clip_like_tokenizer(), t5_like_tokenizer()
    models = tiny_sd3_components((len(clip_tok), len(t5_tok)))
    others = {
        "scheduler": FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        "tokenizer": clip_tok,
        "tokenizer_2": clip_like_tokenizer(),
        "tokenizer_3": t5_tok,
    }
    write_pipeline(folder, StableDiffusion3Pipeline, models, others, SEED)
