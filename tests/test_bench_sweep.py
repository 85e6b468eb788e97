"""Real runs on zoo:tiny-flux through the CLI: a 3-recipe sweep, its metrics, images and latents,
resume, exports, and the backend × offload × compile matrix. Tiny settings keep this to about a
minute on 2 shared cores."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from diffquant.cli import main
from diffquant.store import ResultsDB

RECIPES = ["bf16", "torchao-int8wo", "quanto-int8"]
TINY = ["--prompt", "a red circle on a blue background", "--seeds", "0", "--steps", "2", "--size", "64x64",
        "--repeats", "1", "--device", "cpu", "--timeout", "300", "--no-report"]
REQUIRED = (
    "worker.import_s", "worker.wall_s", "run.wall_s", "proc.rss_mib.before_load",
    "load.wall_s", "load.rss_mib", "load.rss_anon_mib", "load.rss_file_mib", "load.peak_rss_mib",
    "load.peak_rss_anon_mib", "load.vmhwm_mib", "load.quant_cache_used", "load.rss_weight_files_mib",
    "gen.rss_weight_files_mib", "host.loadavg_1m.before_load", "host.loadavg_1m.end",
    "first_call.latency_s", "call.latency_s.p50", "call.latency_s.p90", "call.latency_s.n",
    "step.latency_s.p50", "step.latency_s.p90", "gen.wall_s", "gen.peak_rss_mib", "gen.peak_rss_anon_mib",
    "gen.vmhwm_mib", "proc.vmhwm_mib", "weights.total_bytes", "weights.total_params", "weights.bits_per_weight",
    "weights.transformer.bytes", "weights.transformer.params", "weights.transformer.bits_per_weight",
    "weights.text_encoder_2.bytes", "weights.vae.bytes", "disk.model_bytes",
)


@pytest.fixture(scope="module")
def sweep_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("bench") / "results.db"
    code = main(["bench", "zoo:tiny-flux", "--recipes", ",".join(RECIPES[1:]), "--db", str(db), *TINY])
    assert code == 0
    return db


def test_three_recipes_measured(sweep_db: Path) -> None:
    with ResultsDB(sweep_db) as db:
        runs = {r.recipe: r for r in db.runs()}
        assert list(runs) == RECIPES
        for run in runs.values():
            assert run.status == "ok", run.error
            missing = [k for k in REQUIRED if run.metrics.get(k) is None]
            assert not missing, f"{run.recipe}: no {missing}"
            m = run.metrics
            assert m["gen.peak_rss_mib"] >= m["load.rss_mib"] > 0
            assert m["load.peak_rss_mib"] >= m["load.rss_mib"] >= m["load.rss_anon_mib"] > 0
            assert m["load.rss_mib"] == pytest.approx(m["load.rss_anon_mib"] + m["load.rss_file_mib"], abs=16)
            assert m["load.rss_weight_files_mib"] <= m["load.rss_file_mib"] + 1
            assert m["call.latency_s.p90"] >= m["call.latency_s.p50"] > 0 and m["step.latency_s.p50"] > 0
            assert m["call.latency_s.n"] == 1 and m["first_call.latency_s"] > 0
            assert m["call.minor_faults.p50"] >= 0  # per steady call (getrusage)
            assert m["compile.time_s"] is None  # not compiled
            assert m["run.wall_s"] >= m["worker.wall_s"] >= m["load.wall_s"] + m["gen.wall_s"]
            assert m["weights.total_params"] > 10_000_000
            assert run.settings["steps"] == 2 and run.settings["device"] == "cpu"
            assert run.env["packages"]["torch"] and run.env["cpu_model"] and "git_commit" in run.env
            images = db.images(run.id)
            assert len(images) == 1
            _check_image(images[0], run.recipe, run.recipe_hash)
        bf16 = runs["bf16"].metrics
        assert bf16["weights.transformer.bits_per_weight"] == pytest.approx(16, abs=0.1)
        for name in RECIPES[1:]:
            m = runs[name].metrics
            # (quanto adds two scalar scale buffers per Linear; they count as elements)
            assert m["weights.transformer.params"] == pytest.approx(bf16["weights.transformer.params"], rel=1e-3)
            ratio = m["weights.transformer.bytes"] / bf16["weights.transformer.bytes"]
            assert 0.45 <= ratio <= 0.6, f"{name}: int8 transformer is {ratio:.2f} of bf16"
            assert m["weights.text_encoder_2.bytes"] < bf16["weights.text_encoder_2.bytes"]  # T5 quantized too
            assert m["weights.vae.bytes"] == bf16["weights.vae.bytes"]  # the VAE is not
        assert len({r.sweep_id for r in runs.values()}) == 1


def _check_image(image: object, recipe: str, recipe_hash: str) -> None:
    from PIL import Image
    from safetensors import safe_open

    path = Path(image.path)  # type: ignore[attr-defined]
    assert path.is_absolute() and path.is_file()
    with Image.open(path) as im:
        assert im.size == (64, 64)
        assert im.text["recipe"] == recipe and im.text["seed"] == "0" and im.text["recipe_hash"] == recipe_hash
        assert im.text["prompt"] == "a red circle on a blue background"
    with safe_open(image.latents_path, "pt") as f:  # type: ignore[attr-defined]
        assert f.get_tensor("latents").ndim >= 3 and f.metadata()["recipe"] == recipe


def test_rerun_skips_finished_runs(sweep_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ResultsDB(sweep_db) as db:
        before = [(r.id, r.finished_at) for r in db.runs()]
    assert main(["bench", "zoo:tiny-flux", "--recipes", ",".join(RECIPES[1:]), "--db", str(sweep_db), *TINY]) == 0
    with ResultsDB(sweep_db) as db:
        assert [(r.id, r.finished_at) for r in db.runs()] == before
    assert "already in the database" in capsys.readouterr().err


def test_results_exports(sweep_db: Path, capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps the table to the terminal's width
    capsys.readouterr()
    assert main(["results", "--db", str(sweep_db), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["recipe"] for r in rows] == RECIPES and float(rows[0]["call.latency_s.p50"]) > 0
    assert main(["results", "--db", str(sweep_db), "--format", "json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["runs"]) == 3 and payload["runs"][0]["images"][0]["latents_path"]
    assert main(["results", "--db", str(sweep_db), "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert "| Recipe | Status | Memory after loading | Peak memory | Inference time | Compile time |" in md
    assert "(1.00×)" in md
    assert main(["results", "--db", str(sweep_db)]) == 0
    out = capsys.readouterr().out
    assert "torchao-int8wo" in out and "load.rss_mib" in out
    assert main(["results", "--db", str(sweep_db.parent / "none.db")]) == 2


def test_matrix_cells_run_in_workers(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["matrix", "zoo:tiny-flux", "--quant", "bf16,nonsense", "--offload", "none;offload-model",
                 "--compile", "off", "--steps", "1", "--device", "cpu", "--timeout", "300", "--format", "json"])
    assert code == 0
    cells = {c["recipe"]: c for c in json.loads(capsys.readouterr().out)["cells"]}
    assert cells["bf16"]["status"] == "ok" and cells["bf16"]["first_call_s"] > 0
    assert cells["bf16+offload-model"]["status"] == "n/a" and "accelerator" in cells["bf16+offload-model"]["reason"]
    assert {c["status"] for r, c in cells.items() if r.startswith("nonsense")} == {"invalid"}


def test_bench_writes_scores_report_and_grid(sweep_db: Path) -> None:
    from diffquant.commands.bench import write_reports

    write_reports(sweep_db, "bf16")
    assert (sweep_db.parent / "report.html").stat().st_size > 0
    assert (sweep_db.parent / "grid.png").stat().st_size > 0
    with ResultsDB(sweep_db) as db:
        tables = {r[0] for r in db.connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert any(t.startswith("quality_") for t in tables)
