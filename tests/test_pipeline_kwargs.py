"""A model folder's diffquant.json can fix pipeline arguments the model was trained for
(``pipeline_kwargs``: true CFG, the T5 sequence length); diffquant applies and records them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffquant import zoo
from diffquant.errors import DiffquantError
from diffquant.pipeline import default_settings, generate, load_pipeline

KWARGS = {"max_sequence_length": 16, "negative_prompt": "", "true_cfg_scale": 2.0}
PROMPT = "a red circle"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("kw") / "tiny-flux-kwargs"
    shutil.copytree(zoo.ensure_model("tiny-flux"), folder)
    (folder / "diffquant.json").write_text(json.dumps(
        {"steps": 2, "size": [64, 64], "guidance_scale": 3.5, "pipeline_kwargs": KWARGS}))
    return folder


def test_default_settings_read_pipeline_kwargs(model_dir: Path, tmp_path: Path) -> None:
    assert default_settings(str(model_dir)).pipeline_kwargs == KWARGS
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    (bad / "diffquant.json").write_text(json.dumps({"steps": 2, "pipeline_kwargs": {"true_cfg": 2}}))
    with pytest.raises(DiffquantError, match="unknown pipeline_kwargs") as err:
        default_settings(str(bad))
    assert "true_cfg_scale" in str(err.value.hint)


def test_generate_applies_the_models_pipeline_kwargs(model_dir: Path) -> None:
    pipe = load_pipeline(str(model_dir), "bf16", device="cpu")
    ours = generate(pipe, PROMPT, seed=3).latents

    def direct(**kwargs: object) -> torch.Tensor:
        out = pipe(PROMPT, num_inference_steps=2, height=64, width=64, guidance_scale=3.5,
                   generator=torch.Generator("cpu").manual_seed(3), output_type="latent", **kwargs)
        return out.images.float()

    assert torch.equal(ours, direct(**KWARGS))
    assert not torch.equal(ours, direct())  # the kwargs change the image: they were applied


def test_bench_settings_record_pipeline_kwargs(model_dir: Path) -> None:
    from diffquant.bench.spec import sweep_id
    from diffquant.bench.sweep import resolve_settings

    settings = resolve_settings(str(model_dir), prompts=[PROMPT], device="cpu")
    assert settings.identity()["true_cfg_scale"] == 2.0
    plain = resolve_settings(str(zoo.ensure_model("tiny-flux")), prompts=[PROMPT], device="cpu")
    assert "true_cfg_scale" not in plain.identity()
    assert sweep_id("m", settings) != sweep_id("m", plain)
