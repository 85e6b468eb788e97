"""Every marked table in README.md and docs/*.md agrees with its committed data file, and the
check notices when one does not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from scriptload import load_script

ROOT = Path(__file__).resolve().parents[1]


def _render_docs():
    return load_script("scripts/render_docs.py")


@pytest.fixture(scope="module")
def render_docs():
    return _render_docs()


SOURCES_OUTSIDE_DOCS = ("src/diffquant/zoo/shapes/weights/train_report.json",)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The docs, README and their data in a scratch tree."""
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns("images"))
    for report in SOURCES_OUTSIDE_DOCS:  # data files that live beside what they describe
        (tmp_path / report).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / report, tmp_path / report)
    return tmp_path


def test_repo_tables_agree_with_their_data(render_docs, capsys) -> None:
    assert render_docs.main(["--check"]) == 0, capsys.readouterr().err
    out = render_docs.process(ROOT, render_docs.default_files(ROOT))
    assert out.tables >= 11 and not out.stale and not out.errors


def test_every_data_file_is_used_and_says_where_it_came_from(render_docs) -> None:
    used = {b.attrs["source"] for path in render_docs.default_files(ROOT)
            for b in render_docs.find_blocks(path, path.read_text(encoding="utf-8").split("\n"))}
    data_files = {f"docs/data/{p.name}" for p in (ROOT / "docs" / "data").glob("*.json")}
    assert data_files <= used, f"data files no table renders: {sorted(data_files - used)}"
    for name in data_files:
        data = json.loads((ROOT / name).read_text(encoding="utf-8"))
        tables = data.get("tables", {})
        assert data.get("provenance") or all(t.get("provenance") for t in tables.values()), name


def test_check_fails_when_the_data_changes(render_docs, copy: Path, capsys) -> None:
    source = copy / "docs" / "data" / "recipes_cpu_flux_dev_slice.json"
    data = json.loads(source.read_text(encoding="utf-8"))
    bnb = next(r for r in data["runs"] if r["recipe"] == "bnb-nf4")
    bnb["summary"]["peak_mib"] = 1234.5
    source.write_text(json.dumps(data), encoding="utf-8")

    assert render_docs.main(["--check", "--root", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "table:recipes_cpu_flux_dev_slice " in err and "1234.5 MiB" in err
    assert "table:plan_accuracy" not in err  # the other tables still agree

    assert render_docs.main(["--root", str(copy)]) == 0  # rendering brings the doc in line
    assert "| 1234.5 MiB (" in (copy / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert render_docs.main(["--check", "--root", str(copy)]) == 0


def test_check_fails_when_the_doc_is_edited_by_hand(render_docs, copy: Path, capsys) -> None:
    doc = copy / "docs" / "gguf.md"
    text = doc.read_text(encoding="utf-8")
    assert "| Q4_K | 4.50 | 0.07129 |" in text
    doc.write_text(text.replace("| Q4_K | 4.50 | 0.07129 |", "| Q4_K | 4.50 | 0.06000 |"), encoding="utf-8")
    assert render_docs.main(["--check", "--root", str(copy)]) == 1
    assert "table:gguf_errors" in capsys.readouterr().err


def test_broken_markers_and_missing_data_are_errors(render_docs, copy: Path, capsys) -> None:
    doc = copy / "docs" / "recipes.md"
    doc.write_text(doc.read_text(encoding="utf-8").replace("<!-- /table -->", ""), encoding="utf-8")
    (copy / "docs" / "data" / "gguf.json").unlink()
    assert render_docs.main(["--check", "--root", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "not closed" in err and "gguf.json does not exist" in err


def test_runs_view_picks_columns_by_counter_name_and_ignores_extra_keys(render_docs) -> None:
    data = {"runs": [
        {"recipe": "bf16", "status": "ok", "sweep_id": "s", "quality": {"psnr": 1},
         "metrics": {"gen.peak_rss_mib": 200.0, "call.latency_s.p50": 2.0, "weights.total_bytes": 2 * 2**20,
                     "new.counter": 7}},
        {"recipe": "bnb-nf4", "status": "ok", "sweep_id": "s",
         "metrics": {"gen.peak_rss_mib": 100.0, "call.latency_s.p50": 3.0, "weights.total_bytes": 2**20}},
        {"recipe": "torchao-int4wo", "status": "error", "sweep_id": "s", "error": "no CPU | layout", "metrics": {}},
    ]}
    block = render_docs.Block(Path("x.md"), "t", {"source": "x.json",
                              "columns": "recipe,weights.total_bytes*,gen.peak_rss_mib*,call.latency_s.p50,error"}, 0, 1)
    headers, rows = render_docs.view_runs(data, block)
    assert headers == ["recipe", "weights.total_bytes (×bf16)", "gen.peak_rss_mib (×bf16)", "call.latency_s.p50",
                       "error"]
    assert rows[1] == ["bnb-nf4", "1.0 MiB (0.50×)", "100.0 MiB (0.50×)", "3 s", ""]
    assert rows[2][0] == "torchao-int4wo" and rows[2][1] == "-" and rows[2][4] == "error: no CPU / layout"


def test_a_new_table_of_figures_without_data_is_an_error(render_docs, copy: Path, capsys) -> None:
    doc = copy / "docs" / "quality.md"
    doc.write_text(doc.read_text(encoding="utf-8") + "\n| recipe | PSNR |\n|---|---|\n| bnb-nf4 | 30.1 dB |\n",
                   encoding="utf-8")
    assert render_docs.main(["--check", "--root", str(copy)]) == 1
    assert "docs/quality.md" in capsys.readouterr().err


def test_cpu_table_shows_model_memory_and_latency_ci(render_docs) -> None:
    data = json.loads((ROOT / "docs" / "data" / "recipes_cpu_flux_dev_slice.json").read_text(encoding="utf-8"))
    block = render_docs.Block(Path("x.md"), "t", {"source": "x.json"}, 0, 1)
    bnb = next(r for r in data["runs"] if r["recipe"] == "bnb-nf4")
    sm = bnb["summary"]
    sm.update({"peak_mib": 500.0, "peak_mib.ratio": 0.25, "peak_mib.process": 900.0, "peak_mib.fallback": False,
               "inference_s.ratio": 1.2, "inference_s.ratio_low": 1.1, "inference_s.ratio_high": 1.3})
    headers, rows = render_docs.view_cpu_recipes(data, block)
    row = dict(zip(headers, next(r for r in rows if r[0] == "bnb-nf4"), strict=True))
    assert row["peak generating: model (×bf16) (process)"] == "500.0 MiB (0.25×) (900.0 MiB)"
    assert row["call ×bf16 [95% CI]"] == "1.20× [1.10, 1.30]"
    sm["inference_s.ratio_low"] = 0.95  # an interval that holds 1.0 reads as "about the same"
    sm["peak_mib.fallback"] = True  # a run without the model's counters: the process figure alone
    headers, rows = render_docs.view_cpu_recipes(data, block)
    row = dict(zip(headers, next(r for r in rows if r[0] == "bnb-nf4"), strict=True))
    assert row["call ×bf16 [95% CI]"].startswith("≈")
    assert row["peak generating: model (×bf16) (process)"] == "500.0 MiB (0.25×)"


def test_gpu_check_view_renders_the_checks_table(render_docs) -> None:
    result = {"settings": {"device": "cuda"}, "recipes": {
        "bf16": {"status": "ok", "weights.total_bytes": 23.8 * 2**30, "load.cuda_allocated_mib": 24371.2,
                 "load.cuda_reserved_mib": 24400.0, "load.gpu_used_mib.nvml": 25000.0,
                 "gen.cuda_max_allocated_mib": 28000.0, "gen.cuda_max_reserved_mib": 29000.0,
                 "gen.peak_gpu_used_mib.nvml": 29600.0, "build.cuda_max_allocated_mib": 24371.2,
                 "step.latency_s.p50": 0.25},
        "gguf-q4_k": {"status": "error", "error": "Traceback...\nRuntimeError: CUDA out of memory"}}}
    block = render_docs.Block(Path("x.md"), "t", {"source": "x.json"}, 0, 1)
    headers, rows = render_docs.view_gpu_check(result, block)
    assert headers[2] == "after loading: alloc / reserved / NVML GiB"
    assert rows[0] == ["bf16", "23.800", "23.800 / 23.828 / 24.414", "27.344 / 28.320 / 28.906", "23.800", "0.250",
                       "31.447 / 36.166", "0.24"]
    assert rows[1][:2] == ["gguf-q4_k", "error: RuntimeError: CUDA out of memory"] and rows[1][-2:] == ["-", "-"]


def test_shapes_attributes_view_puts_each_attribute_beside_adherence(render_docs, copy: Path, capsys) -> None:
    source = copy / "docs" / "shapes-eval.json"
    data = json.loads(source.read_text(encoding="utf-8"))
    bf16 = next(r for r in data["results"] if r["variant"] == "bf16")
    bf16["seen_by_attribute"]["shape"] = 0.25  # other weights: the README's table must follow
    bf16["heldout_all_correct"] = 0.05
    source.write_text(json.dumps(data), encoding="utf-8")
    assert render_docs.main(["--check", "--root", str(copy)]) == 1
    err = capsys.readouterr().err
    assert "README.md" in err and "table:shapes_attributes" in err
    assert render_docs.main(["--root", str(copy)]) == 0
    readme = (copy / "README.md").read_text(encoding="utf-8")
    seen = bf16["seen_by_attribute"]
    assert (f"| bf16, seen prompts | {bf16['seen']:.2f} | 0.25 | {seen['colour']:.2f} | {seen['background']:.2f} | "
            f"{seen['position']:.2f} | {seen['size']:.2f} |") in readme
    assert f"| bf16, held-out shape/colour pairs | {bf16['heldout']:.2f} |" in readme
    assert "| 0.05 |" in readme
    block = render_docs.Block(Path("x.md"), "t", {"source": "x.json", "variants": "bf16,int3"}, 0, 1)
    with pytest.raises(render_docs.DocsError, match="no variant 'int3'"):
        render_docs.view_shapes_attributes(data, block)
