"""benchmarks/bench_new_backends.py: its --quick preset keeps every recipe and model, and its data
renders into docs/backends.md through scripts/render_docs.py (no model is run here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from scriptload import load_script

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path) -> ModuleType:
    return load_script(path)


def test_quick_preset_keeps_the_coverage_and_cuts_the_calls() -> None:
    bench = _load(ROOT / "benchmarks" / "bench_new_backends.py")
    quick, full = bench.parse_args(["--quick"]), bench.parse_args([])
    assert quick.recipes == full.recipes and quick.models == full.models and not quick.no_compile
    assert quick.repeats >= 3 and quick.prompts < full.prompts
    assert bench.steps_for("zoo:flux-dev-slice", quick) == 2 and bench.steps_for("zoo:shapes", quick) is None
    assert bench.steps_for("zoo:flux-dev-slice", full) is None
    assert bench.steps_for("zoo:shapes", bench.parse_args(["--quick", "--steps", "3"])) == 3


def _row(recipe: str, denoiser: int, call: float, **extra: object) -> dict[str, object]:
    return {"recipe": recipe, "ok": True, "denoiser_bytes": denoiser, "text_encoder_bytes": 1 << 20,
            "call_s_p50": call, "first_call_s": call * 2, "load_s": 1.0, **extra}


DATA = {
    "provenance": "test data",
    "models": {"zoo:flux-dev-slice": [
        _row("bf16", 1 << 30, 2.0),
        _row("sdnq-int8", 1 << 29, 3.0, psnr_db_vs_bf16=41.5, psnr_db_vs_bf16_min=40.0, latency_ratio_vs_bf16=1.5,
             denoiser_bytes_ratio_vs_bf16=0.5, text_encoder_bytes_ratio_vs_bf16=0.5),
        {"recipe": "modelopt-fp8", "ok": False, "refused": "CUDA only. Nearest that runs here: sdnq-fp8"},
        {"recipe": "sdnq-fp4", "ok": False, "error": "Traceback\nRuntimeError: boom"},
    ]},
    "compile": {"model": "zoo:flux-dev-slice",
                "full": _row("bf16+compile", 1 << 30, 1.6, compile_s_estimate=40.0, latency_ratio_vs_eager_bf16=0.8),
                "regional": _row("bf16+compile(regional)", 1 << 30, 1.7, compile_s_estimate=12.0,
                                 latency_ratio_vs_eager_bf16=0.85)},
}


def test_render_gives_the_three_tables() -> None:
    bench = _load(ROOT / "benchmarks" / "bench_new_backends.py")
    text = bench.render(DATA)
    assert "| zoo:flux-dev-slice | sdnq-int8 | 512.0 MiB (0.50×) |" in text
    assert "41.5 / 40.0 dB" in text and "failed: RuntimeError: boom" in text
    assert "| modelopt-fp8 | CUDA only. Nearest that runs here: sdnq-fp8 |" in text
    assert "| compile(regional) | 3.40 s | 12.00 s | 1.70 s | 0.85× |" in text
    assert "not measured" in bench.render({**DATA, "compile": None})


def test_doc_tables_are_filled_by_render_docs_and_checked(tmp_path: Path) -> None:
    for name in ("README.md", "docs"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    report = "src/diffquant/zoo/shapes/weights/train_report.json"  # docs/shapes.md renders it
    (tmp_path / report).parent.mkdir(parents=True)
    shutil.copy(ROOT / report, tmp_path / report)
    (tmp_path / "docs" / "data" / "new_backends.json").write_text(json.dumps(DATA))
    bench = _load(ROOT / "benchmarks" / "bench_new_backends.py")
    doc = tmp_path / "docs" / "backends.md"
    assert not bench.ensure_doc_tables(doc)  # the committed page has its tables: added once, never twice
    render = [sys.executable, str(ROOT / "scripts" / "render_docs.py"), "--root", str(tmp_path)]
    assert subprocess.run(render, check=False, capture_output=True).returncode == 0
    check = subprocess.run([*render, "--check"], check=False, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    text = doc.read_text()
    assert "| zoo:flux-dev-slice | sdnq-int8 |" in text and "No figures here yet" not in text
