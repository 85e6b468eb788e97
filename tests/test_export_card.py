"""The model card: parses with huggingface_hub.ModelCard, its metadata validates, its numbers equal
the results database's, its sample images are the runs' own; ``diffquant card`` and ``export gguf
--card-from`` write it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_quality_fixtures import make_db

import diffquant
from diffquant.cli import main
from diffquant.errors import DiffquantError
from diffquant.export.card import validate_card
from diffquant.quality import score_database
from diffquant.quality.store import read_quality
from diffquant.serialize import save_quantized
from diffquant.store import ResultsDB, RunRow

MODEL = "zoo:tiny-flux"
MIB = 1024 * 1024
METRICS = ["psnr", "ssim", "latent-rel-error"]


@pytest.fixture(scope="module")
def scored_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = make_db(tmp_path_factory.mktemp("db"))
    with ResultsDB(db) as store:  # a GGUF run too, for `export gguf --card-from`
        q8 = next(r for r in store.runs() if r.recipe == "quanto-int8")
        images = store.images(q8.id)
        metrics = dict(q8.metrics, **{"gen.peak_rss_mib": 777.0, "weights.total_bytes": 3 * MIB})
        store.record_run(RunRow(0, q8.sweep_id, MODEL, "gguf-q4_k", "hashg", q8.settings, "ok", None, metrics,
                                q8.env, q8.started_at, q8.finished_at, run_key="keyg"), images)
    score_database(db, metrics=METRICS)
    return db


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pipe = diffquant.load_pipeline(MODEL, "quanto-int8", device="cpu")
    return save_quantized(pipe, tmp_path_factory.mktemp("export") / "tiny-flux-quanto-int8")


def _db_facts(db_path: Path, recipe: str) -> tuple[RunRow, RunRow, dict, list, list]:
    with ResultsDB(db_path) as db:
        run = next(r for r in db.runs() if r.recipe == recipe)
        ref = next(r for r in db.runs() if r.recipe == "bf16")
        quality = read_quality(db.connection)[run.id]
        return run, ref, quality, db.images(run.id), db.images(ref.id)


def test_card_without_database(export: Path) -> None:
    card = validate_card(export / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "diffusers" and data["pipeline_tag"] == "text-to-image"
    assert {"diffquant", "quantized", "optimum-quanto", "quanto-int8"} <= set(data["tags"])
    assert "base_model" not in data  # a zoo model is not on the Hub
    dq = data["diffquant"]
    assert dq["recipe"] == "quanto-int8" and dq["source_model"] == MODEL and "measured" not in dq
    from diffquant.inspect import component_stats

    quantized = diffquant.load_pipeline(MODEL, "quanto-int8", device="cpu")  # what the export was made from
    for name, stats in component_stats(quantized).items():
        if name in dq["quantization"]:
            assert dq["quantization"][name]["weight_bytes"] == stats.weight_bytes
            assert f"{stats.weight_bytes:,}" in card.text
    assert "## Measured" not in card.text and "no pickle" in card.text


def test_card_numbers_equal_the_database(export: Path, scored_db: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(export, folder)
    assert main(["card", str(folder), "--card-from", str(scored_db), "--base-model", "org/tiny-flux"]) == 0
    card = validate_card(folder / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "org/tiny-flux" and data["base_model_relation"] == "quantized"
    measured = data["diffquant"]["measured"]
    run, ref, quality, images, ref_images = _db_facts(scored_db, "quanto-int8")
    assert measured["run_id"] == run.id and measured["reference_run_id"] == ref.id
    cols = measured["columns"]
    # on CPU the card shows the model's own memory where the run recorded it (issue 10's counters)
    used = {}
    for key, counters in (("after_load_mib", ("load.model_rss_mib", "load.rss_mib")),
                          ("peak_mib", ("gen.model_peak_rss_mib", "gen.peak_rss_mib")),
                          ("inference_s", ("call.latency_s.p50",)),
                          ("load_peak_mib", ("load.model_peak_rss_mib", "load.peak_rss_mib"))):
        used[key] = counter = next(c for c in counters if c in run.metrics)
        assert cols[key]["value"] == run.metrics[counter] and cols[key]["counter"] == counter
    assert cols["weights_mib"]["value"] == run.metrics["weights.total_bytes"] / MIB
    peak = used["peak_mib"]
    assert cols["peak_mib"]["ratio_to_reference"] == run.metrics[peak] / ref.metrics[peak]
    for name in METRICS:
        got, want = measured["quality"][name], quality[name]
        assert (got["mean"], got["ci_low"], got["ci_high"], got["n"]) == (want.mean, want.ci_low, want.ci_high, want.n)
    from diffquant.report.format import format_estimate

    psnr = quality["psnr"]
    assert format_estimate(psnr.mean, psnr.ci_low, psnr.ci_high, psnr.unit) in card.text
    assert f"{run.metrics['gen.peak_rss_mib']:.1f} MiB" in card.text
    # Sample images: the run's and the reference's own files, side by side.
    shown = re.findall(r"!\[[^\]]*\]\((images/[^)]+)\)", card.text)
    assert len(shown) == 2 * min(4, len(images))
    assert (folder / "images/sample0-quantized.png").read_bytes() == Path(images[0].path).read_bytes()
    assert (folder / "images/sample0-reference.png").read_bytes() == Path(ref_images[0].path).read_bytes()
    assert (folder / "images/sample0-quantized.png").read_bytes() != (folder / "images/sample0-reference.png").read_bytes()


def test_card_refusals(export: Path, scored_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from diffquant.export.measured import find_measured

    with pytest.raises(DiffquantError, match="no successful run"):
        find_measured(scored_db, "zoo:tiny-sd3", {"quant": []}, "x")
    assert main(["card", str(export), "--base-model", "not an id"]) == 2
    assert "not a Hub id" in capsys.readouterr().err
    assert main(["card", str(tmp_path)]) == 2
    assert "not a diffquant export" in capsys.readouterr().err
    broken = tmp_path / "README.md"
    broken.write_text("---\nlibrary_name: transformers\ntags: []\n---\n# x\n")
    with pytest.raises(DiffquantError, match="library_name.*tags"):
        validate_card(broken)


def test_gguf_file_card_loads_as_it_says(scored_db: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "tiny-flux-Q4_K"
    gguf = folder / "tiny-flux-transformer-Q4_K.gguf"
    assert main(["export", "gguf", MODEL, "--type", "Q4_K", "-o", str(gguf), "--card-from", str(scored_db),
                 "-q"]) == 0
    card = validate_card(folder / "README.md")
    measured = card.data.to_dict()["diffquant"]["measured"]
    run, *_ = _db_facts(scored_db, "gguf-q4_k")
    assert measured["run_id"] == run.id and measured["columns"]["peak_mib"]["value"] == 777.0
    code = re.search(r"```python\n(.*?)```", card.text, re.DOTALL).group(1)
    code = code.replace(f'folder = "{folder.name}"', f'folder = "{folder}"')
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - the card's own lines
    from diffquant.pipeline import generate

    def image(pipe):
        return np.asarray(generate(pipe, "a blue square", seed=3, steps=2, height=64, width=64,
                                   guidance_scale=3.5).image)

    assert np.array_equal(image(namespace["pipe"]), image(diffquant.load_pipeline(MODEL, "gguf-q4_k(cpu_kernel=false)",
                                                                                  device="cpu")))
    # A card needs a folder of its own.
    (tmp_path / "other.txt").write_text("x")
    assert main(["export", "gguf", MODEL, "--type", "Q8_0", "-o", str(tmp_path / "x.gguf"), "--card", "-q"]) == 2
    assert "other files" in capsys.readouterr().err and not (tmp_path / "x.gguf").exists()


@pytest.mark.slow
def test_quantize_card_from_a_real_bench_run(tmp_path: Path) -> None:
    """The whole path: `diffquant bench` on zoo:tiny-flux, then `diffquant quantize --card-from`."""
    db = tmp_path / "results.db"
    tiny = ["--prompt", "a red circle on a blue background", "--prompt", "a small green square", "--seeds", "0",
            "--steps", "2", "--size", "64x64", "--repeats", "1", "--device", "cpu", "--timeout", "300"]
    assert main(["bench", MODEL, "--recipes", "quanto-int8", "--db", str(db), *tiny]) == 0
    out = tmp_path / "export"
    assert main(["quantize", MODEL, "--recipe", "quanto-int8", "-o", str(out), "--device", "cpu",
                 "--card-from", str(db)]) == 0
    card = validate_card(out / "README.md")
    measured = card.data.to_dict()["diffquant"]["measured"]
    run, ref, quality, images, _ = _db_facts(db, "quanto-int8")
    assert measured["run_id"] == run.id and measured["reference_run_id"] == ref.id
    assert measured["columns"]["peak_mib"]["value"] == run.metrics["gen.peak_rss_mib"]
    assert measured["columns"]["inference_s"]["value"] == run.metrics["call.latency_s.p50"]
    assert measured["quality"]["psnr"]["mean"] == quality["psnr"].mean
    assert (out / "images/sample0-quantized.png").read_bytes() == Path(images[0].path).read_bytes()
