"""The ``shapes`` pipeline's architecture, the shipped weights, and the random-weight twin.

A genuine ``FluxPipeline`` (zoo entries ``shapes`` and ``shapes-random``):

- ``FluxTransformer2DModel``: 4 heads x 64 = inner dim 256, rope axes (8, 28, 28), no guidance
  embedding; ``in_channels`` 64 = 4 x 16 latent channels, as in FLUX.1. Every Linear has
  ``in_features`` a multiple of 256 except ``x_embedder`` (64, still a multiple of 32/64), so
  GGUF K-quants, Q8_0/Q4_x, bnb, torchao and quanto can all quantize it.
- ``T5EncoderModel``: d_model 256, d_ff 512, 4 heads x 64, gated-gelu. Its relative attention bias
  is zero (a position-free encoder): every ``<pad>`` position then gets the same output, which lets
  training stand in one token with an attention bias of log(count) for the pads up to
  ``max_sequence_length`` (32 for this model, from ``diffquant.json``; see ``train.py``). Frozen
  after random init.
- ``CLIPTextModel``: hidden 256, MLP 512, 4 heads, eos 1 (pools at the first end-of-text token).
  Trained with the transformer; its pooled output carries the word order.
- ``AutoencoderKL``: 3 levels (scale factor 4), channels (16, 32, 64), 16 latent channels: a 64x64
  image is a 16x16x16 latent, i.e. 8x8 = 64 image tokens after FLUX's 2x2 packing. (A 4-level VAE
  would leave a 4x4 token grid, on which FLUX's RoPE barely tells the caption's positions apart.)
- ``FlowMatchEulerDiscreteScheduler``, shift 1, no dynamic shifting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffquant.errors import DiffquantError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
PIPELINE_DIR = WEIGHTS_DIR / "pipeline"
SCORER_FILE = WEIGHTS_DIR / "scorer.safetensors"
META_FILE = "diffquant.json"
RANDOM_SEED = 1234

TRANSFORMER: dict[str, Any] = {
    "patch_size": 1, "in_channels": 64, "num_layers": 1, "num_single_layers": 3,
    "attention_head_dim": 64, "num_attention_heads": 4, "joint_attention_dim": 256,
    "pooled_projection_dim": 256, "guidance_embeds": False, "axes_dims_rope": [8, 28, 28],
}
VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16,
    "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 64], "layers_per_block": 1, "norm_num_groups": 2,
    "act_fn": "silu", "sample_size": 64, "scaling_factor": 1.0, "shift_factor": 0.0,
    "use_quant_conv": False, "use_post_quant_conv": False, "mid_block_add_attention": True,
}
CLIP: dict[str, Any] = {
    "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_hidden_layers": 2,
    "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 256,
    "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1,
}
T5: dict[str, Any] = {
    "d_model": 256, "d_ff": 512, "d_kv": 64, "num_heads": 4, "num_layers": 2,
    "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128, "dropout_rate": 0.0, "pad_token_id": 0, "eos_token_id": 1,
    "decoder_start_token_id": 0, "is_encoder_decoder": False, "use_cache": False,
}
SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False}


def new_pipeline(seed: int = RANDOM_SEED, transformer: dict[str, Any] | None = None,
                 vae: dict[str, Any] | None = None) -> Any:
    """A float32 ``FluxPipeline`` of this architecture with the libraries' own seeded random init
    (``transformer``/``vae`` override config entries, e.g. for the smoke test's tiny sizes)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from diffquant.zoo.shapes.tokenizer import clip_tokenizer, t5_tokenizer

    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP, vocab_size=len(tokenizer)))
    text_encoder_2 = T5EncoderModel(T5Config(**T5, vocab_size=len(tokenizer_2)))
    with torch.no_grad():
        for module in text_encoder_2.modules():
            bias = getattr(module, "relative_attention_bias", None)
            if bias is not None:
                bias.weight.zero_()  # position-free T5: identical outputs at every pad position
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        vae=AutoencoderKL(**{**VAE, **(vae or {})}),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=FluxTransformer2DModel(**{**TRANSFORMER, **(transformer or {})}),
    )
    for model in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.transformer):
        model.float().eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_pipeline(pipe: Any, folder: Path, meta: dict[str, Any]) -> None:
    """Write ``pipe`` as a bf16 safetensors pipeline folder plus ``diffquant.json`` (``meta``)."""
    import copy

    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = copy.copy(pipe)
    for name in ("vae", "text_encoder", "text_encoder_2", "transformer"):
        setattr(out, name, copy.deepcopy(getattr(pipe, name)).to(torch.bfloat16))
    out.save_pretrained(folder, safe_serialization=True)
    for name in ("text_encoder", "text_encoder_2"):
        # transformers 5 loads in the config's dtype by default, diffusers in float32: record float32
        # so that a plain ``from_pretrained(folder)`` gives one dtype (torch_dtype= still wins).
        config_file = folder / name / "config.json"
        config = json.loads(config_file.read_text())
        config["dtype"] = "float32"
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def default_meta() -> dict[str, Any]:
    """The generation defaults ``diffquant`` reads from ``diffquant.json``."""
    from diffquant.zoo.shapes import (
        DEFAULT_GUIDANCE,
        DEFAULT_PIPELINE_KWARGS,
        DEFAULT_PROMPTS,
        DEFAULT_SIZE,
        DEFAULT_STEPS,
    )

    return {
        "steps": DEFAULT_STEPS, "size": [DEFAULT_SIZE, DEFAULT_SIZE], "guidance_scale": DEFAULT_GUIDANCE,
        "pipeline_kwargs": dict(DEFAULT_PIPELINE_KWARGS), "prompts": list(DEFAULT_PROMPTS),
        "note": "guidance_scale has no effect (no guidance embedding); the model was trained for the "
                "pipeline_kwargs (true classifier-free guidance against the empty prompt, a short T5 "
                "sequence), which diffquant passes on every call. A plain FluxPipeline call needs them "
                "too: pipe(prompt, **pipeline_kwargs).",
    }


def shipped_folder() -> Path:
    """``zoo:shapes``: the trained pipeline folder shipped inside the package."""
    if not (PIPELINE_DIR / "model_index.json").is_file():
        raise DiffquantError(
            f"The shapes model's weights are missing from {PIPELINE_DIR}.",
            hint=f"reinstall diffquant, or train them with `python scripts/train_shapes.py --out {WEIGHTS_DIR}`",
        )
    return PIPELINE_DIR


def build_random(folder: Path) -> None:
    """``zoo:shapes-random``: the same architecture, tokenizers and settings, random weights."""
    save_pipeline(new_pipeline(RANDOM_SEED), Path(folder), {**default_meta(), "trained": False})
