"""FLUX pipelines with seeded random weights, built offline (zoo entries ``tiny-flux``,
``flux-dev-slice`` and ``flux-dev-random``).

Every builder writes a complete ``FluxPipeline`` folder (bf16 safetensors, tokenizers, scheduler,
``model_index.json``) that ``FluxPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)``
loads like a Hub checkpoint. Building goes component by component so that peak memory is about one
component in bf16:

1. every model is instantiated on the ``meta`` device (no memory) to describe the pipeline and
   write ``model_index.json``;
2. each model in turn is then materialised on the CPU directly in bf16 with ``torch.manual_seed``
   (the libraries' own weight initialisation), saved to its subfolder and freed.

The three sizes (see :func:`tiny_spec`, :func:`dev_slice_spec`, :func:`dev_full_spec`):

- ``tiny-flux`` (13.1M params: transformer 9.3M, T5 1.5M, CLIP 1.3M, VAE 1.0M; 26 MB):
  transformer 2 double + 4 single blocks, 4 heads x 64 (inner dim 256, rope axes (8, 28, 28));
  T5 2 layers, d_model 256, d_ff 512, 4 heads x 64, gated-gelu; CLIP 2 layers, hidden 256, MLP 512;
  a 4-level VAE with channels (32, 32, 64, 64) and 16 latent channels, so ``in_channels`` = 64 as
  in FLUX.1. Widths are chosen so that every transformer and T5 Linear has ``in_features`` a
  multiple of 256 (GGUF K-quants' block size) - the only exception is ``x_embedder`` (64 inputs,
  exactly as in FLUX.1, still a multiple of 32 and 64 for Q8_0/Q4_x, bnb, torchao and quanto).
  CLIP Linears have 256 or 512 inputs, too. A 64x64 image in 3 steps takes ~0.25 s on 2 CPU cores.
- ``flux-dev-slice`` (0.98B params: transformer 0.69B, T5 0.20B, VAE 84M, CLIP 15M; 2.0 GB):
  FLUX.1-dev's exact widths (24 heads x 128 = 3072, rope (16, 56, 56), joint dim 4096, pooled 768,
  in_channels 64, guidance embeds) with 1 double and 2 single blocks; a 1-layer T5 at T5-XXL
  widths; 2-layer CLIP-L; the real FLUX VAE config (decoding 128x128 takes ~3 s on 2 CPU cores).
  The text encoders' vocabularies are the offline tokenizers' (~760) rather than 32128/49408,
  which keeps 170M parameters of unused embedding rows out of the slice. Builds in ~30 s.
- ``flux-dev-random`` (16.87B params, 33.7 GB): the full FLUX.1-dev architecture (19 + 38 blocks,
  11.90B), the full T5-XXL encoder (24 layers, 4.76B, vocab 32128), CLIP-L (12 layers, 123M,
  vocab 49408) and the FLUX VAE (84M); meant for a GPU host with >= 40 GiB of RAM.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SEED = 0
MAX_SHARD = "5GB"  # a shard is held in memory while written: peak ~ component + one shard

FLUX_DEV_SCHEDULER: dict[str, Any] = {
    "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
}

FLUX_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
    "act_fn": "silu", "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
    "use_quant_conv": False, "use_post_quant_conv": False, "mid_block_add_attention": True,
    "force_upcast": True,
}

FLUX_DEV_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56],
}

T5_XXL: dict[str, Any] = {
    "d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24,
    "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6, "vocab_size": 32128,
}

CLIP_L: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
    "num_hidden_layers": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "projection_dim": 768, "vocab_size": 49408,
}


@dataclass(frozen=True)
class FluxSpec:
    """Constructor arguments of each component of a FLUX pipeline.

    ``clip``/``t5`` are ``CLIPTextConfig``/``T5Config`` keyword arguments; a ``vocab_size`` of
    ``None`` means "the offline tokenizer's size".
    """

    transformer: dict[str, Any]
    vae: dict[str, Any]
    clip: dict[str, Any]
    t5: dict[str, Any]
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(FLUX_DEV_SCHEDULER))


def tiny_spec() -> FluxSpec:
    """The ``tiny-flux`` sizes (see the module docstring for why these widths)."""
    return FluxSpec(
        transformer={**FLUX_DEV_TRANSFORMER, "num_layers": 2, "num_single_layers": 4,
                     "attention_head_dim": 64, "num_attention_heads": 4, "joint_attention_dim": 256,
                     "pooled_projection_dim": 256, "axes_dims_rope": [8, 28, 28]},
        vae={**FLUX_VAE, "block_out_channels": [32, 32, 64, 64], "layers_per_block": 1,
             "sample_size": 64},
        clip={**CLIP_L, "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
              "num_hidden_layers": 2, "projection_dim": 256, "vocab_size": None},
        t5={**T5_XXL, "d_model": 256, "d_ff": 512, "d_kv": 64, "num_heads": 4, "num_layers": 2,
            "vocab_size": None},
    )


def dev_slice_spec() -> FluxSpec:
    """FLUX.1-dev widths, 1 double + 2 single blocks, 1-layer T5-XXL, 2-layer CLIP-L, real VAE."""
    return FluxSpec(
        transformer={**FLUX_DEV_TRANSFORMER, "num_layers": 1, "num_single_layers": 2},
        vae=dict(FLUX_VAE),
        clip={**CLIP_L, "num_hidden_layers": 2, "vocab_size": None},
        t5={**T5_XXL, "num_layers": 1, "vocab_size": None},
    )


def dev_full_spec() -> FluxSpec:
    """The full FLUX.1-dev architecture."""
    return FluxSpec(transformer=dict(FLUX_DEV_TRANSFORMER), vae=dict(FLUX_VAE), clip=dict(CLIP_L),
                    t5=dict(T5_XXL))


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create floating-point tensors in ``dtype`` inside the block (restores the old default)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def clip_config(kwargs: dict[str, Any], vocab_size: int) -> Any:
    """A ``CLIPTextConfig`` matching the offline CLIP-like tokenizer (bos 0, eos = pad = 1)."""
    from transformers import CLIPTextConfig

    args = {**kwargs, "vocab_size": kwargs.get("vocab_size") or vocab_size}
    return CLIPTextConfig(**args, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def t5_config(kwargs: dict[str, Any], vocab_size: int) -> Any:
    """An encoder-only ``T5Config`` matching the offline T5-like tokenizer (pad 0, eos 1)."""
    from transformers import T5Config

    args = {**kwargs, "vocab_size": kwargs.get("vocab_size") or vocab_size}
    return T5Config(**args, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                    is_encoder_decoder=False, use_cache=False)


def meta_components(spec: FluxSpec, vocab: tuple[int, int]) -> dict[str, torch.nn.Module]:
    """Every model of the pipeline instantiated on the meta device (no memory, no init)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    with init_empty_weights(include_buffers=True):
        return {
            "transformer": FluxTransformer2DModel(**spec.transformer),
            "vae": AutoencoderKL(**spec.vae),
            "text_encoder": CLIPTextModel(clip_config(spec.clip, vocab[0])),
            "text_encoder_2": T5EncoderModel(t5_config(spec.t5, vocab[1])),
        }


def materialize(meta_model: torch.nn.Module, seed: int, dtype: torch.dtype = torch.bfloat16
                ) -> torch.nn.Module:
    """A real CPU copy of a meta-device model: same class and config, seeded random weights,
    created directly in ``dtype`` (no float32 copy in between)."""
    torch.manual_seed(seed)
    with default_dtype(dtype):
        if hasattr(meta_model, "from_config"):  # diffusers ModelMixin
            model = type(meta_model).from_config(meta_model.config)
        else:  # transformers PreTrainedModel
            model = type(meta_model)(meta_model.config)
    if any(p.dtype != dtype for p in model.parameters() if p.is_floating_point()):
        model = model.to(dtype)
    return model.eval()


def write_pipeline(folder: Path, pipeline_cls: type, models: dict[str, torch.nn.Module],
                   others: dict[str, Any], seed: int = SEED) -> None:
    """Write a pipeline folder one model at a time.

    ``models`` are meta-device models; ``others`` are the light components (tokenizers,
    scheduler). ``model_index.json`` is written from a pipeline object holding the meta models,
    then each model is materialised (seed ``seed + i``), saved in bf16 safetensors and freed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pipe = pipeline_cls(**models, **others)
    pipe.save_config(folder)  # model_index.json only
    del pipe
    for name, component in others.items():
        if component is not None:
            component.save_pretrained(folder / name)
    for i, (name, meta_model) in enumerate(models.items()):
        model = materialize(meta_model, seed + i)
        model.save_pretrained(folder / name, safe_serialization=True, max_shard_size=MAX_SHARD)
        del model
        gc.collect()
    _check_index(folder, [*models, *others])


def _check_index(folder: Path, names: list[str]) -> None:
    index = json.loads((folder / "model_index.json").read_text())
    missing = [n for n in names if n not in index or not (folder / n).is_dir()]
    if missing:
        raise RuntimeError(f"pipeline folder {folder} is missing components {missing}")


def build_flux(folder: Path, spec: FluxSpec, seed: int = SEED) -> None:
    """Write a ``FluxPipeline`` folder for ``spec`` with seeded random weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from diffquant.zoo.tokenizers import clip_like_tokenizer, t5_like_tokenizer

    tokenizer, tokenizer_2 = clip_like_tokenizer(), t5_like_tokenizer()
    models = meta_components(spec, (len(tokenizer), len(tokenizer_2)))
    others = {
        "scheduler": FlowMatchEulerDiscreteScheduler(**spec.scheduler),
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
    }
    write_pipeline(folder, FluxPipeline, models, others, seed)


def build_tiny_flux(folder: Path) -> None:
    """``zoo:tiny-flux``: 13.1M params, a 64x64 image in a fraction of a second on CPU."""
    build_flux(folder, tiny_spec())


def build_flux_dev_slice(folder: Path) -> None:
    """``zoo:flux-dev-slice``: FLUX.1-dev widths, 1 double + 2 single blocks (0.98B params)."""
    build_flux(folder, dev_slice_spec())


def build_flux_dev_random(folder: Path) -> None:
    """``zoo:flux-dev-random``: full FLUX.1-dev architecture, random weights (~34 GB bf16).

    Peak memory is about the largest component in bf16 (the 11.9B transformer: ~24 GB) plus one
    5 GB safetensors shard while it is written: build it on a host with >= 40 GiB of RAM.
    """
    build_flux(folder, dev_full_spec())
