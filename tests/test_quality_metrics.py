"""Quality metrics on synthetic images with known answers, the registry and the bootstrap."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffquant.errors import DiffquantError
from diffquant.quality import METRICS, MetricOptions, MetricUnavailable
from diffquant.quality.batch import Batch
from diffquant.quality.bootstrap import bootstrap_mean, paired_difference
from diffquant.quality.metrics import ms_ssim_plan
from diffquant.quality.registry import MetricInfo, MetricRegistry


def _gray(size: int = 128, level: int = 128) -> Image.Image:
    return Image.fromarray(np.full((size, size, 3), level, dtype=np.uint8))


def _textured(size: int = 128, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 128 + 60 * np.sin(xx / 7.0)[..., None] * np.cos(yy / 11.0)[..., None]
    base = base + rng.normal(0, 5, (size, size, 3))
    return Image.fromarray(np.clip(base, 0, 255).round().astype(np.uint8))


def _noisy(img: Image.Image, sigma: float, seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.asarray(img, dtype=np.float64) + rng.normal(0, sigma, np.asarray(img).shape)
    return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))


def _batch(images: list[Image.Image], refs: list[Image.Image], model: str = "zoo:tiny-flux") -> Batch:
    n = len(images)
    return Batch(model=model, prompts=["a prompt"] * n, image_paths=[Path(f"x{i}.png") for i in range(n)],
                 reference_paths=[Path(f"r{i}.png") for i in range(n)], preloaded=images,
                 preloaded_references=refs)


def _metric(name: str):
    return METRICS.get(name).load(MetricOptions())


def test_identical_images_psnr_inf_ssim_one() -> None:
    img = _textured()
    batch = _batch([img, img.copy()], [img, img])
    assert all(math.isinf(v) and v > 0 for v in _metric("psnr")(batch))
    assert _metric("ssim")(batch) == pytest.approx([1.0, 1.0], abs=1e-9)
    assert _metric("ms-ssim")(batch) == pytest.approx([1.0, 1.0], abs=1e-6)


@pytest.mark.parametrize("sigma", [4.0, 8.0, 16.0])
def test_gaussian_noise_gives_expected_psnr(sigma: float) -> None:
    ref = _gray(256)
    noisy = _noisy(ref, sigma)
    # rounding to uint8 adds a uniform error of variance 1/12 LSB^2; no clipping around mid-grey
    expected = 10 * math.log10(255.0 ** 2 / (sigma ** 2 + 1 / 12))
    (value,) = _metric("psnr")(_batch([noisy], [ref]))
    assert value == pytest.approx(expected, abs=0.15)


def test_more_noise_scores_worse_on_every_reference_metric() -> None:
    ref = _textured(192)
    light, heavy = _noisy(ref, 3.0), _noisy(ref, 25.0)
    for name in ("psnr", "ssim", "ms-ssim"):
        a, b = _metric(name)(_batch([light, heavy], [ref, ref]))
        assert a > b, name


def test_ms_ssim_adapts_to_small_images_and_says_so() -> None:
    assert ms_ssim_plan(256, 256) is not None and len(ms_ssim_plan(256, 256)[0]) == 5
    betas, kernel = ms_ssim_plan(64, 64)  # type: ignore[misc]
    assert len(betas) == 3 and kernel == 11 and sum(betas) == pytest.approx(1.0)
    assert ms_ssim_plan(5, 5) is None and ms_ssim_plan(8, 8)[1] == 3  # type: ignore[index]
    ref = _textured(64)
    batch = _batch([_noisy(ref, 10.0)], [ref])
    (value,) = _metric("ms-ssim")(batch)
    assert 0.0 < value < 1.0
    assert batch.notes and "3 scales" in batch.notes[0]


def test_lpips_without_torchvision_is_unavailable_not_a_number() -> None:
    from diffquant.quality.learned import lpips_unavailable_reason

    reason = lpips_unavailable_reason("alex")
    if reason is None:
        pytest.skip("torchvision and LPIPS weights are present here")
    with pytest.raises(MetricUnavailable) as exc:
        METRICS.get("lpips").load(MetricOptions())
    assert str(exc.value) == reason
    assert "torchvision" in reason or "weights" in reason


def test_lpips_names_missing_backbone_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    import sys
    import types

    from diffquant.quality import learned

    fake = types.ModuleType("torchvision")
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "torchvision" else real_find_spec(name, *a))
    reason = learned.lpips_unavailable_reason("alex", hub_dir=tmp_path)
    assert reason is not None and "alexnet-owt-7be5be79.pth" in reason and str(tmp_path) in reason


def test_clip_score_unavailable_offline_for_unknown_model(tmp_path: Path) -> None:
    with pytest.raises(MetricUnavailable, match="does not exist"):
        METRICS.get("clip-score").load(MetricOptions(clip_model=str(tmp_path / "no-such-clip")))
    with pytest.raises(MetricUnavailable, match="not in the Hugging Face cache"):
        METRICS.get("clip-score").load(MetricOptions(clip_model="diffquant-tests/no-such-clip-model"))


def test_clip_score_with_a_local_model(tmp_path: Path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from diffquant.zoo.tokenizers import clip_like_tokenizer

    tok = clip_like_tokenizer(vocab_size=300)
    config = CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": 0,
                     "eos_token_id": 1, "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=16)
    import torch

    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    fn = METRICS.get("clip-score").load(MetricOptions(clip_model=str(tmp_path)))
    imgs = [_textured(64, s) for s in range(3)]
    batch = Batch(model="zoo:tiny-flux", prompts=["a red cat", "a blue dog", "a castle"],
                  image_paths=[Path("a")] * 3, preloaded=imgs)
    values = fn(batch)
    assert len(values) == 3 and all(0.0 <= v <= 100.0 for v in values)
    assert values == fn(batch)  # deterministic


def test_shapes_adherence_only_for_the_shapes_model() -> None:
    try:
        fn = METRICS.get("shapes-adherence").load(MetricOptions())
    except MetricUnavailable as exc:
        assert "shapes scorer" in str(exc)
        return
    with pytest.raises(MetricUnavailable, match="zoo:shapes"):
        fn(_batch([_gray(32)], [_gray(32)], model="zoo:tiny-flux"))


def test_latent_relative_error(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    ref = torch.randn(1, 16, 8, 8)
    save_file({"latents": ref}, str(tmp_path / "ref.safetensors"))
    save_file({"latents": ref * 1.1}, str(tmp_path / "q.safetensors"))
    save_file({"latents": ref.clone()}, str(tmp_path / "same.safetensors"))
    fn = METRICS.get("latent-rel-error").load(MetricOptions())
    batch = Batch(model="m", prompts=["p", "p"], image_paths=[Path("a"), Path("b")],
                  latent_paths=[tmp_path / "q.safetensors", tmp_path / "same.safetensors"],
                  reference_latent_paths=[tmp_path / "ref.safetensors"] * 2)
    assert fn(batch) == pytest.approx([0.1, 0.0], abs=1e-6)
    batch.latent_paths = [None, None]
    with pytest.raises(MetricUnavailable, match="no latents"):
        fn(batch)


# -- registry ----------------------------------------------------------------------------------------
def test_registry_refuses_duplicates_and_suggests_close_matches() -> None:
    reg = MetricRegistry()
    info = MetricInfo("psnr", "diffquant.quality.metrics:make_psnr", True, True, "dB", "")
    reg.register(info)
    with pytest.raises(ValueError, match="already registered"):
        reg.register(info)
    with pytest.raises(DiffquantError, match="Did you mean: 'psnr'"):
        reg.get("pnsr")
    assert [m.name for m in METRICS.resolve(["SSIM", "psnr", "ssim"])] == ["ssim", "psnr"]


def test_registry_is_lazy() -> None:
    import subprocess
    import sys

    code = ("import sys, diffquant.quality as q; q.METRICS.resolve(None); "
            "print(any(m in sys.modules for m in ('torch', 'torchmetrics', 'transformers', 'matplotlib')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_every_metric_declares_direction() -> None:
    directions = {m.name: m.higher_is_better for m in METRICS}
    assert directions["psnr"] and directions["ssim"] and not directions["lpips"]
    assert not directions["latent-rel-error"]
    assert {m.name for m in METRICS if not m.needs_reference} == {"clip-score", "shapes-adherence", "shapes-shape",
                                                                "shapes-all-correct"}


# -- bootstrap ---------------------------------------------------------------------------------------
def test_bootstrap_ci_contains_mean_and_shrinks_with_more_samples() -> None:
    rng = np.random.default_rng(42)
    widths = []
    for n in (8, 64, 512):
        values = rng.normal(30.0, 2.0, n).tolist()
        est = bootstrap_mean(values, seed=0)
        assert est is not None and est.n == n
        assert est.ci_low <= est.mean <= est.ci_high
        assert est.mean == pytest.approx(float(np.mean(values)))
        widths.append(est.ci_high - est.ci_low)
    assert widths[0] > widths[1] > widths[2]
    # ~ 2 x 1.96 x sigma / sqrt(n)
    assert widths[2] == pytest.approx(2 * 1.96 * 2.0 / math.sqrt(512), rel=0.25)


def test_bootstrap_is_seeded_and_handles_edge_cases() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert bootstrap_mean(values, seed=3) == bootstrap_mean(values, seed=3)
    assert bootstrap_mean([]) is None
    assert bootstrap_mean([math.nan]) is None
    one = bootstrap_mean([5.0])
    assert one is not None and (one.mean, one.ci_low, one.ci_high, one.n) == (5.0, 5.0, 5.0, 1)
    inf = bootstrap_mean([math.inf, math.inf])
    assert inf is not None and math.isinf(inf.mean) and math.isinf(inf.ci_low)
    mixed = bootstrap_mean([math.inf, 30.0, 31.0, 29.0])
    assert mixed is not None and math.isinf(mixed.mean) and not math.isnan(mixed.ci_low)
    assert bootstrap_mean([1.0, math.nan, 3.0]).n == 2  # type: ignore[union-attr]


def test_paired_difference() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(25, 5, 40)
    run = ref - 1.0 + rng.normal(0, 0.1, 40)  # consistently 1 lower: a paired CI is tight
    est = paired_difference(run.tolist(), ref.tolist())
    assert est is not None and est.ci_high < 0 and est.contains(-1.0)
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])
