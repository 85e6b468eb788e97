"""scripts/compare_train_reports.py: two training reports with the same file hashes are a
reproduction; one changed digest, or a file only one run wrote, is not (the negative controls),
and the rendered table and exit status say so."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from scriptload import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_train_reports.py"
SHIPPED = Path(__file__).resolve().parents[1] / "src" / "diffquant" / "zoo" / "shapes" / "weights" / "train_report.json"


def _script() -> Any:
    return load_script(SCRIPT)


def _write(path: Path, report: dict[str, Any]) -> Path:
    path.write_text(json.dumps(report))
    return path


def test_same_hashes_reproduce_and_a_changed_or_missing_file_does_not(tmp_path: Path) -> None:
    script = _script()
    shipped = json.loads(SHIPPED.read_text())
    out = tmp_path / "repro.json"
    assert script.main([str(_write(tmp_path / "same.json", shipped)), "--shipped", str(SHIPPED), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["identical"] and len(data["files"]) == len(shipped["files"])
    assert f"**{len(shipped['files'])} of {len(shipped['files'])}**" in script.render(data)

    changed = copy.deepcopy(shipped)
    name = next(iter(changed["files"]))
    changed["files"][name] = "0" * 64
    assert script.main([str(_write(tmp_path / "changed.json", changed)), "--shipped", str(SHIPPED),
                        "--out", str(out)]) == 1
    data = json.loads(out.read_text())
    assert not data["identical"] and [r["file"] for r in data["files"] if not r["same"]] == [name]
    assert "**NO**" in script.render(data)

    missing = copy.deepcopy(shipped)
    del missing["files"][name]
    data = script.compare(shipped, missing, "")
    assert not data["identical"] and "(not written)" in script.render(data)


def test_a_missing_report_is_refused_and_nothing_is_written(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "repro.json"
    assert _script().main([str(tmp_path / "absent.json"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err and not out.exists()
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"runs": []}))
    assert _script().main([str(other), "--out", str(out)]) == 2
    assert "is not a training report" in capsys.readouterr().err and not out.exists()
