"""A resumed zoo:shapes training reuses the VAE the first run wrote (``train.load_trained_vae``);
saving it again must give the same files a fresh run writes — the same weights and a config without
this machine's path. ``from_pretrained`` (the negative control) records the folder in the config."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("diffusers")


def _written(vae, folder: Path) -> dict[str, bytes]:
    import torch

    vae.to(torch.bfloat16).save_pretrained(folder)  # as train.train() writes it
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_reused_vae_is_saved_as_a_fresh_run_saves_it(tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    from diffquant.zoo.shapes.model import new_pipeline
    from diffquant.zoo.shapes.train import SMOKE, load_trained_vae

    fresh = _written(new_pipeline(transformer=SMOKE.transformer, vae=SMOKE.vae).vae, tmp_path / "fresh")
    reused = _written(load_trained_vae(tmp_path / "fresh"), tmp_path / "reused")
    assert reused == fresh
    control = _written(AutoencoderKL.from_pretrained(tmp_path / "fresh"), tmp_path / "control")
    assert b"_name_or_path" in control["config.json"] and control["config.json"] != fresh["config.json"]
