"""benchmarks/sweep_agreement.py: two sweeps' latency ratios compared through their bootstrap CIs."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from scriptload import load_script

REPO = Path(__file__).resolve().parents[1]


def _module() -> ModuleType:
    return load_script("benchmarks/sweep_agreement.py")


def _sweep(latencies: dict[str, list[float]], commit: str = "abc") -> dict:
    runs = [{"recipe": name, "status": "ok", "started_at": "2026-12-01T00:00:00Z",
             "metrics": {"call.latency_s.samples": samples}} for name, samples in latencies.items()]
    runs.append({"recipe": "broken", "status": "error", "started_at": "2026-12-01T00:00:00Z", "metrics": {}})
    return {"commit": commit, "host_load": {"contended": False}, "runs": runs}


BF16 = [1.00, 1.01, 0.99, 1.02, 1.00]


def _write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_agreeing_sweeps_pass_and_the_table_renders(tmp_path: Path) -> None:
    mod = _module()
    a = _write(tmp_path, "a.json", _sweep({"bf16": BF16, "nf4": [1.30, 1.31, 1.29, 1.32, 1.30]}))
    b = _write(tmp_path, "b.json", _sweep({"bf16": [1.01, 1.00, 1.02, 0.99, 1.01], "nf4": [1.31, 1.30, 1.33, 1.29, 1.31]}))
    out = tmp_path / "agree.json"
    assert mod.main([str(a), str(b), "--out", str(out)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    (row,) = data["rows"]
    assert row["recipe"] == "nf4" and row["overlap"]
    assert row["a"]["low"] <= row["a"]["ratio"] <= row["a"]["high"]
    assert abs(row["a"]["ratio"] - 1.30) < 0.02
    assert "| nf4 | 1.30×" in mod.render(data)


def test_a_shifted_sweep_is_reported_as_disagreeing(tmp_path: Path) -> None:
    """Negative control: the same recipe 20% slower in sweep B (a contended run) must fail."""
    mod = _module()
    a = _write(tmp_path, "a.json", _sweep({"bf16": BF16, "nf4": [1.30, 1.31, 1.29, 1.32, 1.30]}))
    b = _write(tmp_path, "b.json", _sweep({"bf16": BF16, "nf4": [1.56, 1.57, 1.55, 1.58, 1.56]}))
    out = tmp_path / "agree.json"
    assert mod.main([str(a), str(b), "--out", str(out)]) == 1
    data = json.loads(out.read_text(encoding="utf-8"))
    assert not data["rows"][0]["overlap"] and not data["rows"][0]["each_inside_other"]
    assert "| NO |" in mod.render(data)


def test_a_sweep_without_the_reference_is_refused(tmp_path: Path) -> None:
    mod = _module()
    a = _write(tmp_path, "a.json", _sweep({"nf4": [1.3, 1.3]}))
    b = _write(tmp_path, "b.json", _sweep({"bf16": BF16, "nf4": [1.3, 1.3]}))
    with pytest.raises(SystemExit, match="no successful 'bf16' run"):
        mod.main([str(a), str(b), "--out", str(tmp_path / "x.json")])
