"""Pickles are found by their bytes, written only when allowed, named in the card, and refused on
load unless the user trusts them."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import diffquant
from diffquant.errors import DiffquantError
from diffquant.export.safety import is_pickle_file, pickle_files


def test_pickles_are_found_by_their_bytes(tmp_path) -> None:
    import torch
    from safetensors.torch import save_file

    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.safetensors")  # a zip holding data.pkl, misnamed
    (tmp_path / "blob.dat").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    (tmp_path / "old.bin").write_bytes(b"(dp0\n.")  # protocol 0 has no magic: caught by its name
    # A real safetensors file whose 8-byte header length starts with 0x80 0x02, like a pickle's magic.
    for n in range(500, 1600, 4):
        save_file({"x" * n: torch.zeros(1)}, str(tmp_path / "real.safetensors"))
        head = (tmp_path / "real.safetensors").read_bytes()[:2]
        if head[0] == 0x80 and 2 <= head[1] <= 5:
            break
    else:  # pragma: no cover - the loop always finds one
        pytest.fail("no safetensors header of the wanted length")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (tmp_path / "config.json").write_text("{}")
    found = {p.name for p in pickle_files(tmp_path)}
    assert found == {"weights.safetensors", "blob.dat", "old.bin"}
    assert not is_pickle_file(tmp_path / "real.safetensors")


def test_pickle_only_when_allowed_and_refused_on_load(tmp_path, monkeypatch) -> None:
    """Simulate a torchao version without safetensors support: the save refuses by default; with
    allow_pickle it writes a .bin that the card names and load_pipeline refuses without the flag."""
    from diffquant.pipeline import generate
    from diffquant.serialize import save_quantized

    pipe = diffquant.load_pipeline("zoo:tiny-flux", "torchao-int8wo", device="cpu")
    before = np.asarray(generate(pipe, "a blue square", seed=3, steps=2).image)
    transformer_cls = type(pipe.transformer)
    real = transformer_cls.save_pretrained

    def no_safetensors(self, folder, *args, safe_serialization=True, **kwargs):
        if safe_serialization:
            raise NotImplementedError("torchao tensors cannot be saved with safetensors (simulated)")
        return real(self, folder, *args, safe_serialization=False, **kwargs)

    monkeypatch.setattr(transformer_cls, "save_pretrained", no_safetensors)
    with pytest.raises(DiffquantError, match="only a pickle"):
        save_quantized(pipe, tmp_path / "safe")
    assert list(tmp_path.iterdir()) == []
    out = save_quantized(pipe, tmp_path / "pickled", allow_pickle=True)
    monkeypatch.undo()
    assert [p.relative_to(out).as_posix() for p in pickle_files(out)] == ["transformer/diffusion_pytorch_model.bin"]
    text = (out / "README.md").read_text()
    assert "transformer/diffusion_pytorch_model.bin" in text and "allow_pickle=True" in text
    with pytest.raises(DiffquantError, match="pickle"):
        diffquant.load_pipeline(str(out), device="cpu")
    again = diffquant.load_pipeline(str(out), device="cpu", allow_pickle=True)
    assert np.array_equal(np.asarray(generate(again, "a blue square", seed=3, steps=2).image), before)
