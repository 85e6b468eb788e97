"""Train the ``shapes`` pipeline and its scorer on CPU (``python scripts/train_shapes.py``).

Stages, each deterministic given ``--seed`` (CPU torch, fixed thread count):

1. **VAE** (``AutoencoderKL``): MSE + L1 reconstruction with a small KL term on generator images;
   then ``shift_factor``/``scaling_factor`` are set so the latents have zero mean and unit variance.
2. **Transformer + CLIP** with rectified-flow matching (FLUX's objective): ``x_t = (1-s) x0 + s e``,
   the transformer predicts ``e - x0`` at ``timestep = s`` (logit-normal ``s``); CLIP's pooled
   output is trained along with it, T5 stays frozen at its random init. Weights are averaged (EMA).
   Both run under CPU bf16 autocast and the transformer is compiled: 0.29 s a step on 2 threads,
   where the float32, eager, 1-thread run took 0.77 s; that is what fits 8000 steps into the hour.
   The model is run at ``max_sequence_length=32`` (``diffquant.json``): at FLUX's default of 512
   the ~500 ``<pad>`` outputs outweighed the ~12 caption tokens in attention, and the model never
   learned positions (0.04 correct after 2000 steps; 0.96 at 32 after 1500). T5 is position-free
   here, so all pad outputs are identical, and training replaces them by one token with an
   additive attention bias of ``log(count)`` - the same attention, fewer tokens.
   10% of the captions are dropped (empty prompt) so that the pipeline can use true
   classifier-free guidance against ``negative_prompt=""``.
3. **Scorer** CNN on generator images of all shape/colour pairs (noise and blur augmentation).

Then the pipeline is written in bf16 with ``diffquant.json`` (default steps/size, bench prompts and
the ``pipeline_kwargs`` it was trained for), the
scorer next to it, and the adherence of the result is measured and logged.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from diffquant.atomic import write_text_atomic
from diffquant.zoo.shapes import DEFAULT_PIPELINE_KWARGS, DEFAULT_T5_LENGTH, data
from diffquant.zoo.shapes.model import default_meta, new_pipeline, save_pipeline


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    threads: int = 2  # run it alone: beside another CPU-bound job 2 threads ran 5-10x slower than 1
    vae_steps: int = 1500
    vae_batch: int = 16
    vae_lr: float = 1e-3
    kl_weight: float = 1e-5
    vae_shape_weight: float = 8.0
    vae_logvar_init: float = -8.0
    steps: int = 8000
    batch: int = 32
    lr: float = 8e-4
    warmup: int = 100
    ema: float = 0.995
    qk_norm_lr: float = 10.0  # learning-rate multiplier of the attention q/k RMSNorm gains
    qk_norm_init: float = 1.0
    checkpoint_every: int = 250
    t5_length: int = DEFAULT_T5_LENGTH  # the max_sequence_length the pipeline is run with (diffquant.json)
    uncond_prob: float = 0.1  # fraction of captions replaced by "" (for classifier-free guidance)
    flow_shape_weight: float = 4.0  # extra flow-loss weight of the image tokens the shape covers
    flow_edge_weight: float = 0.0  # extra weight of the tokens the outline crosses (where the shape is)
    autocast_bf16: bool = True  # transformer + CLIP under CPU bf16 autocast (AMX); loss in float32
    compile: bool = True  # torch.compile the transformer for training (fixed text length: one graph)
    scorer_steps: int = 1200
    scorer_batch: int = 64
    scorer_lr: float = 2e-3
    eval_seeds: tuple[int, ...] = (0, 1)
    log_every: int = 50
    transformer: dict[str, Any] = field(default_factory=dict)  # overrides of model.TRANSFORMER
    vae: dict[str, Any] = field(default_factory=dict)  # overrides of model.VAE


SMOKE = TrainConfig(vae_steps=3, vae_batch=4, steps=3, batch=4, warmup=1, scorer_steps=3, scorer_batch=8,
                    eval_seeds=(0,), log_every=1, threads=1, compile=False,
                    transformer={"num_layers": 1, "num_single_layers": 1},
                    vae={"block_out_channels": [8, 8, 8], "norm_num_groups": 2})


def _images(batch: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _lr_at(step: int, cfg_lr: float, warmup: int, total: int) -> float:
    if step < warmup:
        return cfg_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return cfg_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# --- 1. VAE ---------------------------------------------------------------------------------------

def _on_shape(scenes: list[data.Scene], x: Any) -> Any:
    """(B, 1, H, W): 1 where a pixel differs from the scene's background (the shape), else 0."""
    import torch

    bg = torch.tensor([s.background_rgb for s in scenes]).float() / 127.5 - 1.0
    return ((x - bg[:, :, None, None]).abs().amax(1, keepdim=True) > 0.05).float()


def _shape_weight(scenes: list[data.Scene], x: Any, weight: float) -> Any:
    """Per-pixel loss weight (B, 1, H, W): 1 + ``weight`` on and around the shape, so that the few
    shape pixels are not drowned by the flat background."""
    import torch.nn.functional as F

    return 1.0 + weight * F.max_pool2d(_on_shape(scenes, x), 5, stride=1, padding=2)


def train_vae(vae: Any, cfg: TrainConfig, log: Callable[[str], None]) -> None:
    import torch

    torch.manual_seed(cfg.seed + 1)
    with torch.no_grad():  # start the posterior's log-variance low: small sampling noise from step 0
        vae.encoder.conv_out.bias[vae.config.latent_channels:] = cfg.vae_logvar_init
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0, fused=True)
    batches = data.batches(cfg.seed + 1, cfg.vae_batch, split="train")
    vae.train()
    started = time.perf_counter()
    for step in range(cfg.vae_steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.vae_lr, min(100, cfg.vae_steps // 10 + 1), cfg.vae_steps)
        scenes, imgs = next(batches)
        x = _images(imgs)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        w = _shape_weight(scenes, x, cfg.vae_shape_weight)
        err = recon - x
        rec = ((err.pow(2) + 0.5 * err.abs()) * w).mean() / w.mean()
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = rec + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 10.0)
        opt.step()
        if step % cfg.log_every == 0 or step == cfg.vae_steps - 1:
            log(f"vae {step:5d} rec {rec.item():.4f} kl {kl.item():.2f} "
                f"({time.perf_counter() - started:.0f}s)")
    vae.eval()
    _round_to_bf16(vae)
    with torch.no_grad():
        x = _images(next(data.batches(cfg.seed + 2, 256, split="train"))[1])
        z = vae.encode(x).latent_dist.mode()
        mean, std = z.mean().item(), z.std().item()
        psnr = _psnr(vae.decode(z).sample, x)
    vae.register_to_config(shift_factor=round(mean, 6), scaling_factor=round(1.0 / std, 6))
    log(f"vae done: latent mean {mean:.4f} std {std:.4f}, reconstruction PSNR {psnr:.2f} dB")


def _psnr(a: Any, b: Any) -> float:
    mse = ((a.clamp(-1, 1) - b) / 2).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def _round_to_bf16(model: Any) -> None:
    """Make float32 weights exactly bf16-representable (what ships), for frozen components."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())


# --- 2. transformer + CLIP ---------------------------------------------------------------------

class TextCache:
    """T5 outputs of every training caption as the pipeline computes them at 512 tokens, kept
    compactly: the real tokens, the one pad vector, and the number of real tokens.

    T5 is position-free and unmasked in the pipeline, so the ~500 identical pads act like one pad
    token whose attention logit is raised by log(count): T5 is run that way (a 4-D additive mask),
    and checked against the real 512-token computation on the first captions.
    """

    def __init__(self, pipe: Any, captions: list[str], log: Callable[[str], None],
                 t5_length: int = DEFAULT_T5_LENGTH) -> None:
        import torch

        self.t5_length = t5_length
        self.index = {c: i for i, c in enumerate(captions)}
        clip_ids = pipe.tokenizer(captions).input_ids  # tokenized once, not in the training loop
        self.clip_lengths = torch.tensor([len(i) for i in clip_ids])
        self.clip_ids = torch.full((len(captions), int(self.clip_lengths.max())), pipe.tokenizer.pad_token_id)
        for i, row in enumerate(clip_ids):
            self.clip_ids[i, : len(row)] = torch.tensor(row)
        ids = pipe.tokenizer_2(captions).input_ids
        self.lengths = torch.tensor([len(i) for i in ids])
        width = pipe.text_encoder_2.config.d_model
        self.real = torch.zeros(len(captions), int(self.lengths.max()), width)
        self.pad = torch.zeros(len(captions), width)
        started = time.perf_counter()
        with torch.no_grad():
            for start in range(0, len(captions), 256):
                chunk = slice(start, start + 256)
                lengths = self.lengths[chunk]
                slots = int(lengths.max()) + 1
                tokens = torch.zeros(len(lengths), slots, dtype=torch.long)  # <pad> = 0
                for j, row in enumerate(ids[chunk]):
                    tokens[j, : len(row)] = torch.tensor(row)
                bias = pad_bias(lengths, slots, t5_length)
                emb = pipe.text_encoder_2(tokens, attention_mask=bias[:, None, None, :])[0]
                if start == 0:
                    full = pipe._get_t5_prompt_embeds(captions[:4], max_sequence_length=t5_length)
                    for j in range(full.shape[0]):
                        n = int(lengths[j]) + 1
                        err = (emb[j, :n] - full[j, :n]).abs().max().item()
                        pads = (full[j, n:] - full[j, n - 1]).abs().max().item()
                        if err > 1e-3 or pads > 1e-4:
                            raise RuntimeError(f"collapsed T5 differs from the pipeline's ({err}, {pads})")
                for j in range(len(lengths)):
                    n = int(lengths[j])
                    self.real[start + j, :n] = emb[j, :n]
                    self.pad[start + j] = emb[j, n]
        self.slots = int(self.lengths.max()) + 1  # every batch padded alike: one shape for compile
        log(f"T5 outputs of {len(captions)} captions cached ({time.perf_counter() - started:.0f}s)")

    def clip_batch(self, captions: list[str]) -> Any:
        """CLIP token ids (B, longest), as ``tokenizer(captions, padding="longest")`` gives them."""
        import torch

        idx = torch.tensor([self.index[c] for c in captions])
        return self.clip_ids[idx, : int(self.clip_lengths[idx].max())]

    def batch(self, captions: list[str]) -> tuple[Any, Any]:
        """(text tokens (B, L+1, d), attention bias (B, L+1)) standing in for 512 tokens."""
        import torch

        idx = torch.tensor([self.index[c] for c in captions])
        lengths = self.lengths[idx]
        slots = self.slots
        is_pad = torch.arange(slots)[None, :] >= lengths[:, None]
        real = self.real[idx, : slots - 1]
        real = torch.cat([real, torch.zeros_like(real[:, :1])], dim=1)
        tokens = torch.where(is_pad[..., None], self.pad[idx][:, None, :], real)
        return tokens, pad_bias(lengths, slots, self.t5_length)


def pad_bias(lengths: Any, slots: int, t5_length: int = DEFAULT_T5_LENGTH) -> Any:
    """Additive attention bias (B, slots): 0 on real tokens, log(pads / pad slots) on pad slots,
    so that ``slots - length`` copies of the pad stand in for ``t5_length - length`` of them."""
    import torch

    is_pad = torch.arange(slots)[None, :] >= lengths[:, None]
    per_slot = torch.log((t5_length - lengths).float() / (slots - lengths).float())
    return torch.where(is_pad, per_slot[:, None], torch.zeros(()))


def _resumable(cfg: TrainConfig) -> dict[str, Any]:
    """The settings a checkpoint must share with the run that continues it (all but logging)."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("log_every", "checkpoint_every", "eval_seeds")}


def _differences(saved: dict[str, Any] | None, now: dict[str, Any]) -> str:
    if saved is None:
        return "a checkpoint without its settings, from an older diffquant"
    keys = sorted(k for k in {*saved, *now} if saved.get(k) != now.get(k))
    return ", ".join(f"{k}: {saved.get(k)!r} there, {now.get(k)!r} now" for k in keys)


def _token_weight(scenes: list[data.Scene], x: Any, grid: int, cfg: TrainConfig) -> Any:
    """Flow-loss weight per image token (B, tokens, 1), or None for a plain mean.

    Shape tokens are few and the flat background is easy, so the tokens on and around the shape
    weigh ``1 + flow_shape_weight``; the tokens the outline crosses (partly covered: where square,
    circle and triangle differ) are further multiplied by up to ``1 + flow_edge_weight``.
    """
    import torch.nn.functional as F

    if cfg.flow_shape_weight <= 0 and cfg.flow_edge_weight <= 0:
        return None
    token = x.shape[-1] // grid
    w = F.avg_pool2d(_shape_weight(scenes, x, cfg.flow_shape_weight), token)
    if cfg.flow_edge_weight > 0:
        cover = F.avg_pool2d(_on_shape(scenes, x), token)  # fraction of each token the shape covers
        w = w * (1.0 + cfg.flow_edge_weight * 4.0 * cover * (1.0 - cover))
    return w.flatten(1)[:, :, None]


def _zero_init_modulation(transformer: Any) -> None:
    """DiT-style init: AdaLN modulations and the output projection start at zero (identity blocks)."""
    import torch

    with torch.no_grad():
        for name, module in transformer.named_modules():
            if isinstance(module, torch.nn.Linear) and (
                    name.endswith(("norm1.linear", "norm1_context.linear", "norm.linear"))
                    or name in ("norm_out.linear", "proj_out")):
                module.weight.zero_()
                module.bias.zero_()


def train_transformer(pipe: Any, cfg: TrainConfig, log: Callable[[str], None],
                      checkpoint: Path | None = None) -> Any:
    """Flow-matching training; returns the EMA transformer and CLIP (set into ``pipe``).

    With ``checkpoint``, the full training state is saved there every ``checkpoint_every`` steps,
    and a run that finds the file resumes from it (skipping the batches already seen), so a
    crashed run continues where it stopped and ends with the same weights.
    """
    import copy

    import torch
    from diffusers import FluxPipeline

    vae, transformer, clip = pipe.vae, pipe.transformer, pipe.text_encoder
    _round_to_bf16(pipe.text_encoder_2)
    cache = TextCache(pipe, data.all_captions("train") + [""], log, cfg.t5_length)
    torch.manual_seed(cfg.seed + 3)
    _zero_init_modulation(transformer)
    qk_norms = [p for n, p in transformer.named_parameters() if n.split(".")[-2].startswith(("norm_q", "norm_k",
                                                                                          "norm_added_"))]
    with torch.no_grad():
        for p in qk_norms:
            p.fill_(cfg.qk_norm_init)
    others = [p for p in transformer.parameters() if all(p is not q for q in qk_norms)]
    params = list(transformer.parameters()) + list(clip.parameters())  # same order as the EMA copy's
    groups = [{"params": others + list(clip.parameters()), "lr_mult": 1.0, "weight_decay": 0.01},
              {"params": qk_norms, "lr_mult": cfg.qk_norm_lr, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99), fused=True)
    ema_tr, ema_clip = copy.deepcopy(transformer).eval(), copy.deepcopy(clip).eval()
    ema_params = list(ema_tr.parameters()) + list(ema_clip.parameters())
    gen = torch.Generator().manual_seed(cfg.seed + 4)
    batches = data.batches(cfg.seed + 5, cfg.batch, split="train")
    latent_ch = vae.config.latent_channels
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    lat = 64 // factor
    img_ids = FluxPipeline._prepare_latent_image_ids(1, lat // 2, lat // 2, "cpu", torch.float32)
    first = 0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        saved = state.get("config")
        if saved != _resumable(cfg):
            from diffquant.errors import DiffquantError

            raise DiffquantError(
                f"{checkpoint} was written by a run with other settings ({_differences(saved, _resumable(cfg))}); "
                "continuing it would mix two trainings.",
                hint=f"delete {checkpoint} to start over, or rerun with the settings that wrote it")
        for model, key in ((transformer, "transformer"), (clip, "clip"), (ema_tr, "ema_transformer"),
                           (ema_clip, "ema_clip")):
            model.load_state_dict(state[key])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        first = state["step"]
        for _ in range(first):
            next(batches)
        log(f"resumed from {checkpoint} at step {first}")
    transformer.train()
    clip.train()
    # The text is padded to one length (TextCache.slots), so the compiled graph is built once.
    forward = torch.compile(transformer) if cfg.compile else transformer
    txt_ids = torch.zeros(cache.slots, 3)
    started, running = time.perf_counter(), 0.0
    for step in range(first, cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.lr, cfg.warmup, cfg.steps) * g["lr_mult"]
        scenes, imgs = next(batches)
        captions = [s.caption for s in scenes]
        if cfg.uncond_prob > 0:
            drop = torch.rand(len(captions), generator=gen) < cfg.uncond_prob
            captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        with torch.no_grad():
            x = _images(imgs)
            z = vae.encode(x).latent_dist.mode()
            z = (z - vae.config.shift_factor) * vae.config.scaling_factor
            x0 = FluxPipeline._pack_latents(z, len(scenes), latent_ch, lat, lat)
        text, bias = cache.batch(captions)
        mask = torch.cat([bias, torch.zeros(len(scenes), x0.shape[1])], dim=-1)[:, None, None, :]
        sigma = torch.sigmoid(torch.randn(len(scenes), generator=gen))
        noise = torch.randn(x0.shape, generator=gen)
        s = sigma[:, None, None]
        xt = (1 - s) * x0 + s * noise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
            pooled = clip(cache.clip_batch(captions)).pooler_output
            pred = forward(hidden_states=xt, encoder_hidden_states=text, pooled_projections=pooled,
                           timestep=sigma, img_ids=img_ids, txt_ids=txt_ids,
                           joint_attention_kwargs={"attention_mask": mask}, return_dict=False)[0]
        err = (pred.float() - (noise - x0)).pow(2)
        loss = (err * w).mean() / w.mean() if (w := _token_weight(scenes, x, lat // 2, cfg)) is not None \
            else err.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        running += loss.item()
        if (step + 1) % cfg.log_every == 0 or step == cfg.steps - 1:
            n = cfg.log_every if (step + 1) % cfg.log_every == 0 else (step + 1) % cfg.log_every
            elapsed = time.perf_counter() - started
            log(f"flow {step + 1:5d}/{cfg.steps} loss {running / n:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"({elapsed:.0f}s, {elapsed / (step + 1 - first):.2f}s/step)")
            running = 0.0
        if checkpoint is not None and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            tmp = checkpoint.with_suffix(".tmp")
            torch.save({"step": step + 1, "transformer": transformer.state_dict(), "clip": clip.state_dict(),
                        "ema_transformer": ema_tr.state_dict(), "ema_clip": ema_clip.state_dict(),
                        "optimizer": opt.state_dict(), "generator": gen.get_state(),
                        "config": _resumable(cfg)}, tmp)
            tmp.replace(checkpoint)
    pipe.raw_models = {"transformer": transformer.eval(), "text_encoder": clip.eval()}
    pipe.transformer, pipe.text_encoder = ema_tr, ema_clip
    return pipe


# --- 3. scorer ---------------------------------------------------------------------------------

def _augment(x: Any, gen: Any) -> Any:
    """Random Gaussian noise and blur, so the scorer also reads slightly imperfect generations."""
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    blur = torch.rand(b, generator=gen) < 0.5
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
        x = torch.where(blur[:, None, None, None], F.conv2d(x, k, padding=1, groups=3), x)
    sigma = torch.rand(b, 1, 1, 1, generator=gen) * 0.15
    return x + sigma * torch.randn(x.shape, generator=gen)


def train_scorer(cfg: TrainConfig, log: Callable[[str], None]) -> Any:
    import torch
    import torch.nn.functional as F

    from diffquant.zoo.shapes.scorer import build_network

    torch.manual_seed(cfg.seed + 6)
    net = build_network()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.scorer_lr, weight_decay=1e-4, fused=True)
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    batches = data.batches(cfg.seed + 8, cfg.scorer_batch, split="all")
    net.train()
    started = time.perf_counter()
    for step in range(cfg.scorer_steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.scorer_lr, min(50, cfg.scorer_steps // 10 + 1), cfg.scorer_steps)
        scenes, imgs = next(batches)
        logits = net(_augment(_images(imgs), gen))
        loss = sum(F.cross_entropy(logits[a], torch.tensor([data.CHOICES[a].index(getattr(s, a))
                                                             for s in scenes]))
                   for a in data.ATTRIBUTES)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.log_every == 0 or step == cfg.scorer_steps - 1:
            log(f"scorer {step:5d} loss {loss.item():.4f} ({time.perf_counter() - started:.0f}s)")
    return net.eval()


def scorer_accuracy(net: Any, n: int = 1000, seed: int = 99) -> dict[str, float]:
    """Per-attribute accuracy of the scorer on fresh ground-truth generator images, and the mean."""
    from diffquant.zoo.shapes.scorer import predict

    scenes, imgs = next(data.batches(seed, n, split="all"))
    preds = predict(list(imgs), net)
    acc = {a: float(np.mean([p[a] == getattr(s, a) for p, s in zip(preds, scenes)])) for a in data.ATTRIBUTES}
    acc["mean"] = float(np.mean(list(acc.values())))
    return acc


# --- driver ------------------------------------------------------------------------------------

def load_trained_vae(folder: Path) -> Any:
    """The VAE a previous run wrote to ``folder`` (a resumed run reuses it), in float32. Built from
    its config and weights rather than ``from_pretrained``, which records the folder as
    ``_name_or_path``: saving that config again would write this machine's path into the shipped
    files and make a resumed run's ``vae/config.json`` differ from a fresh run's."""
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder))
    vae.load_state_dict(load_file(folder / "diffusion_pytorch_model.safetensors"))
    return vae.float().eval()


def run(cfg: TrainConfig, out: Path, stages: set[str], log: Callable[[str], None] = print,
        keep_raw: bool = False, resume: bool = True) -> dict[str, Any]:
    """Train ``stages`` into ``out``. With ``resume``, the transformer stage checkpoints into
    ``out/checkpoint.pt``; a run that finds one reuses ``out/pipeline/vae`` and continues."""
    import torch
    from safetensors.torch import save_file

    from diffquant.zoo.shapes.scorer import evaluate

    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if cfg.compile and "transformer" in stages:
        _check_compiler()
    out = Path(out)
    pipe_dir = out / "pipeline"
    # The code's commit as the run starts (edits made while it runs are not its code).
    report: dict[str, Any] = {"config": asdict(cfg), "environment": _environment(cfg), "seconds": {}}
    started = time.perf_counter()
    pipe = new_pipeline(transformer=cfg.transformer, vae=cfg.vae)
    checkpoint = out / "checkpoint.pt"
    if "vae" in stages and not (resume and checkpoint.is_file()):
        t = time.perf_counter()
        train_vae(pipe.vae, cfg, log)
        report["seconds"]["vae"] = round(time.perf_counter() - t, 1)
        pipe.vae.to(torch.bfloat16).save_pretrained(pipe_dir / "vae")  # weights are bf16-exact already
        pipe.vae.float()
    else:
        pipe.vae = load_trained_vae(pipe_dir / "vae")
        log(f"vae loaded from {pipe_dir / 'vae'}")
    if "transformer" in stages:
        t = time.perf_counter()
        train_transformer(pipe, cfg, log, checkpoint if resume else None)
        report["seconds"]["transformer"] = round(time.perf_counter() - t, 1)
        checkpoint.unlink(missing_ok=True)
    kwargs: dict[str, Any] = {"max_sequence_length": cfg.t5_length}
    if cfg.uncond_prob > 0:  # trained on the empty prompt too: true CFG against it
        kwargs = {**DEFAULT_PIPELINE_KWARGS, **kwargs}
    meta = {**default_meta(), "pipeline_kwargs": kwargs, "trained": "transformer" in stages,
            "trained_by": "python scripts/train_shapes.py", "seed": cfg.seed}
    save_pipeline(pipe, pipe_dir, meta)
    log(f"pipeline written to {pipe_dir}")
    if keep_raw and getattr(pipe, "raw_models", None):  # the last weights, not their average
        import copy

        raw = copy.copy(pipe)
        raw.transformer, raw.text_encoder = pipe.raw_models["transformer"], pipe.raw_models["text_encoder"]
        save_pipeline(raw, out / "pipeline-raw", meta)
    scorer_file = out / "scorer.safetensors"
    if "scorer" in stages:
        t = time.perf_counter()
        net = train_scorer(cfg, log)
        report["seconds"]["scorer"] = round(time.perf_counter() - t, 1)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(scorer_file))
    if scorer_file.is_file():
        from diffquant.zoo.shapes.scorer import load_scorer

        net = load_scorer.__wrapped__(scorer_file)
        report["scorer_accuracy"] = scorer_accuracy(net, n=200 if cfg.steps < 10 else 1000)
        log(f"scorer accuracy on generator images: {report['scorer_accuracy']}")
        if "eval" in stages:
            from diffusers import FluxPipeline

            shipped = FluxPipeline.from_pretrained(pipe_dir)  # float32 compute, bf16 weights
            shipped.set_progress_bar_config(disable=True)
            t = time.perf_counter()
            report["adherence"] = evaluate(shipped, seeds=cfg.eval_seeds, scorer=net)
            report["seconds"]["eval"] = round(time.perf_counter() - t, 1)
            log(f"adherence: {report['adherence']}")
    report["seconds"]["total"] = round(time.perf_counter() - started, 1)
    report["files"] = written_files(out)
    report["environment"]["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_text_atomic(out / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report


REPORT_FILE = "train_report.json"


def _check_compiler() -> None:
    """torch.compile on CPU builds C++: fail now, not after the VAE stage, when there is no compiler."""
    import os
    import shutil

    from diffquant.errors import DiffquantError

    names = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    if not any(n and shutil.which(n) for n in names):
        raise DiffquantError("The transformer stage compiles the model (torch.compile builds C++ on CPU), "
                             "but no C++ compiler was found (CXX, g++, c++, clang++).",
                             hint="install one (Debian: apt-get install g++), or train without compile: "
                                  "TrainConfig(compile=False) gives other weights than the shipped ones")


def written_files(out: Path) -> dict[str, str]:
    """sha256 of every file the run ships (the pipeline folder and the scorer), by relative path:
    two runs reproduce each other when these maps are equal."""
    import hashlib

    files = sorted(p for p in [*(out / "pipeline").rglob("*"), out / "scorer.safetensors"] if p.is_file())
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _environment(cfg: TrainConfig) -> dict[str, Any]:
    from diffquant.bench.env import cpu_info, git_commit, package_versions

    return {**cpu_info(), **git_commit(), "torch_threads": cfg.threads, "versions": package_versions(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="output folder for pipeline/ and scorer.safetensors (required: nothing is "
                             "written inside the installed package; to replace the shipped weights give "
                             "src/diffquant/zoo/shapes/weights of a source checkout)")
    parser.add_argument("--smoke", action="store_true", help="a few steps of a tiny model (seconds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int,
                        help="torch threads (default: the config's, 2 for the full run, which reproduces the "
                             "shipped weights only with the same count; run it alone: on a busy 2-core "
                             "machine 2 threads wait on each other and ran 5-10x slower)")
    parser.add_argument("--steps", type=int, help="transformer steps (default: the config's)")
    parser.add_argument("--vae-steps", type=int)
    parser.add_argument("--scorer-steps", type=int)
    parser.add_argument("--no-resume", action="store_true",
                        help="neither write nor resume from OUT/checkpoint.pt (default: checkpoint every "
                             f"{TrainConfig.checkpoint_every} transformer steps; a rerun continues)")
    parser.add_argument("--keep-raw", action="store_true",
                        help="also write OUT/pipeline-raw with the last (not averaged) weights")
    parser.add_argument("--stages", default="vae,transformer,scorer,eval",
                        help="comma-separated subset of vae,transformer,scorer,eval; a skipped vae "
                             "stage loads OUT/pipeline/vae")
    args = parser.parse_args(argv)
    cfg = SMOKE if args.smoke else TrainConfig()
    cfg = replace(cfg, seed=args.seed)
    for name in ("threads", "steps", "vae_steps", "scorer_steps"):
        if getattr(args, name) is not None:
            cfg = replace(cfg, **{name: getattr(args, name)})
    stages = {s.strip() for s in args.stages.split(",") if s.strip()}
    unknown = stages - {"vae", "transformer", "scorer", "eval"}
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; valid: vae, transformer, scorer, eval")

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    log(f"training shapes model into {args.out} with {cfg}")
    run(cfg, args.out, stages, log, keep_raw=args.keep_raw, resume=not args.no_resume)
    return 0
