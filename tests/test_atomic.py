"""diffquant.atomic: a reader sees the old file or the new one, never half of one, and no temporary
is left behind either way."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from diffquant.atomic import atomic_dir, atomic_path, write_json_atomic, write_text_atomic


def test_new_file_appears_whole_with_the_usual_mode(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "a.csv"
    write_text_atomic(out, "a,b\n")
    assert out.read_text() == "a,b\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.csv"]


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    write_json_atomic(out, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(out, suffix=".json") as tmp:
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("writer died")
    assert out.read_text() == '{"v": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_folder_built_in_one_go_and_a_finished_one_is_kept(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    with atomic_dir(folder, done="model_index.json") as tmp:
        (tmp / "model_index.json").write_text("{}")
    assert (folder / "model_index.json").is_file()
    # another process finished the same folder first: keep theirs, drop ours
    with atomic_dir(folder, done="model_index.json") as tmp:
        (tmp / "model_index.json").write_text('{"mine": true}')
    assert (folder / "model_index.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    with pytest.raises(OSError), atomic_dir(folder) as tmp:  # no completion marker: the clash is an error
        (tmp / "x").write_text("")
