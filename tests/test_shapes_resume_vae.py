"""A resumed zoo:shapes training reuses the VAE the first run wrote (``train.load_trained_vae``);
saving it again must give the same files a fresh run writes — the same weights and a config without
this machine's path. ``from_pretrained`` (the negative control) records the folder in the config.
End to end, on the smoke configuration: an interrupted and resumed run writes every file of an
uninterrupted one (with ``from_pretrained`` back in the resume path, the VAE config differs)."""

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


class _Stopped(Exception):
    pass


def test_an_interrupted_and_resumed_training_writes_the_files_of_an_uninterrupted_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What docs/shapes.md's reproduction claims, on the smoke configuration: run A straight
    through; run B stopped right after its first checkpoint, then run again (it resumes). Every file
    of B's report — the VAE's config included — has A's hash."""
    from dataclasses import replace

    import torch

    from diffquant.zoo.shapes import train
    from diffquant.zoo.shapes.train import SMOKE

    cfg = replace(SMOKE, checkpoint_every=1)
    stages = {"vae", "transformer"}
    fresh = train.run(cfg, tmp_path / "a", stages, log=lambda _msg: None)
    real_save = torch.save

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        raise _Stopped

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", save_then_stop)
        with pytest.raises(_Stopped):
            train.run(cfg, tmp_path / "b", stages, log=lambda _msg: None)
    assert (tmp_path / "b" / "checkpoint.tmp").is_file()  # stopped after writing the first checkpoint
    (tmp_path / "b" / "checkpoint.tmp").replace(tmp_path / "b" / "checkpoint.pt")
    resumed = train.run(cfg, tmp_path / "b", stages, log=lambda _msg: None)
    assert "vae" not in resumed["seconds"]  # the VAE was reused, not retrained
    assert resumed["files"] == fresh["files"]
