"""Model-side input: a model folder's diffquant.json is validated with a clear error; quanto's
extension build lock left by a killed worker is removed, a held one fails after a stated wait; the
shapes trainer needs --out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffquant.errors import DiffquantError
from diffquant.zoo.meta import read_model_meta

# --- diffquant.json -------------------------------------------------------------------------------


def meta_error(tmp_path: Path, content: str) -> str:
    (tmp_path / "diffquant.json").write_text(content)
    with pytest.raises(DiffquantError) as info:
        read_model_meta(tmp_path)
    message = str(info.value)
    assert "\n\n" not in message and str(tmp_path / "diffquant.json") in message
    return message


def test_valid_meta_is_read(tmp_path: Path) -> None:
    assert read_model_meta(tmp_path) is None
    (tmp_path / "diffquant.json").write_text(json.dumps({
        "steps": 12, "size": [64, 96], "guidance_scale": 1.0, "prompts": ["a red circle"], "note": "n",
        "trained": True, "trained_by": "x", "seed": 0, "pipeline_kwargs": {"max_sequence_length": 32}}))
    meta = read_model_meta(tmp_path)
    assert meta is not None and (meta.steps, meta.height, meta.width) == (12, 64, 96)
    assert meta.prompts == ("a red circle",) and meta.pipeline_kwargs == {"max_sequence_length": 32}


def test_the_shipped_models_meta_is_valid() -> None:
    from diffquant.zoo.shapes.model import PIPELINE_DIR

    assert read_model_meta(PIPELINE_DIR) is not None


@pytest.mark.parametrize(("content", "fragments"), [
    ('{"steps": 12,}', ["is not valid JSON", "line 1, column", 'e.g. {"steps": 28']),
    ('["steps"]', ["must hold a JSON object", "got list"]),
    ('{"stepz": 12}', ["Unknown field", "'stepz'", "Did you mean: 'steps'"]),
    ('{"steps": "12"}', ["steps must be a whole number >= 1", 'got "12"', '"steps": 28']),
    ('{"steps": 0}', ["steps must be a whole number >= 1"]),
    ('{"size": [64]}', ["size must be [height, width]", '"size": [1024, 1024]']),
    ('{"guidance_scale": "high"}', ["guidance_scale must be a number"]),
    ('{"prompts": "a red circle"}', ["prompts must be a non-empty list"]),
    ('{"pipeline_kwargs": {"true_cfg": 2}}', ["unknown pipeline_kwargs ['true_cfg']", "true_cfg_scale"]),
    ('{"pipeline_kwargs": {"max_sequence_length": "32"}}', ["pipeline_kwargs.max_sequence_length must be"]),
])
def test_bad_meta_gets_a_clear_error(tmp_path: Path, content: str, fragments: list[str]) -> None:
    message = meta_error(tmp_path, content)
    for fragment in fragments:
        assert fragment in message, message


def test_bad_meta_reaches_the_cli_as_an_error(tmp_path: Path, capsys) -> None:
    from diffquant.cli import main

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    (folder / "diffquant.json").write_text("{not json")
    assert main(["bench", str(folder), "--db", str(tmp_path / "r.db"), "--device", "cpu", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "is not valid JSON" in err and "Traceback" not in err


# --- quanto's extension build lock -----------------------------------------------------------------

# What torch's FileBaton does when it starts a build: create the lock exclusively and keep it open.
_HOLDER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_EXCL)
print("held", flush=True)
time.sleep(600)
"""


def hold(lock: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_killed_builders_lock_is_removed_and_the_next_worker_proceeds(tmp_path: Path) -> None:
    from diffquant.backends.quanto import clear_stale_lock, lock_holders

    lock = tmp_path / "build" / "lock"
    lock.parent.mkdir()
    builder = hold(lock)
    assert lock_holders(lock) == [builder.pid]
    os.kill(builder.pid, signal.SIGKILL)  # a worker killed in the middle of the build
    builder.wait()
    assert lock.exists() and lock_holders(lock) == []
    started = time.monotonic()
    note = clear_stale_lock(lock, wait_s=30)
    assert note and "stale" in note and not lock.exists()
    assert time.monotonic() - started < 5
    # The next build takes the lock the way torch does, instead of waiting forever.
    fd = os.open(lock, os.O_CREAT | os.O_EXCL)
    os.close(fd)


def test_a_live_builder_is_waited_for_then_refused_with_the_reason(tmp_path: Path) -> None:
    from diffquant.backends.quanto import clear_stale_lock

    lock = tmp_path / "lock"
    builder = hold(lock)
    try:
        started = time.monotonic()
        with pytest.raises(DiffquantError) as info:
            clear_stale_lock(lock, wait_s=1, poll_s=0.1)
        assert 1 <= time.monotonic() - started < 10
        message = str(info.value)
        assert f"held by pid {builder.pid}" in message and "within 1 s" in message
        assert "DIFFQUANT_QUANTO_LOCK_WAIT_S" in message
        assert lock.exists()  # a live build's lock is never removed
    finally:
        builder.kill()
        builder.wait()
    assert clear_stale_lock(lock, wait_s=1) is not None and not lock.exists()


def test_a_lock_released_while_waiting_lets_the_worker_go_on(tmp_path: Path) -> None:
    from diffquant.backends.quanto import clear_stale_lock

    lock = tmp_path / "lock"
    builder = hold(lock)
    # The builder finishes (releases and removes its lock) while this worker waits.
    finisher = subprocess.Popen([sys.executable, "-c", (f"import os, time; time.sleep(1); os.remove({str(lock)!r}); "
                                                        f"os.kill({builder.pid}, 9)")])
    started = time.monotonic()
    assert clear_stale_lock(lock, wait_s=30, poll_s=0.1) is None
    assert time.monotonic() - started >= 0.5  # it did wait for the live builder
    finisher.wait()
    builder.wait()


def test_quanto_load_config_checks_its_extension_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("optimum.quanto")
    from diffquant.backends import quanto

    dirs = quanto.extension_build_dirs()
    assert dirs and all(d.name == "build" for d in dirs)  # where quanto builds (and torch locks)
    fake = tmp_path / "build"
    fake.mkdir()
    (fake / "lock").write_text("")
    monkeypatch.setattr(quanto, "extension_build_dirs", lambda: [fake])
    from diffquant.backends.base import ComponentContext
    from diffquant.recipes import parse_recipe

    ctx = ComponentContext("transformer", "diffusers", "FluxTransformer2DModel", str(tmp_path), None, "cpu", True)
    quanto.load_config(parse_recipe("quanto-int8").quant[0], ctx)
    assert not (fake / "lock").exists()


# --- the shapes trainer's output folder --------------------------------------------------------------

def test_train_shapes_needs_out(capsys) -> None:
    from diffquant.zoo.shapes.train import main

    with pytest.raises(SystemExit) as info:
        main(["--smoke"])
    assert info.value.code == 2 and "--out" in capsys.readouterr().err
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_shapes.py"
    result = subprocess.run([sys.executable, str(script), "--smoke"], capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "the following arguments are required: --out" in result.stderr
