"""The Ray executor on a local, loopback-only Ray cluster (one for the module): the same rows and
byte-identical images as the local executor; a worker that crashes or times out inside a Ray
task, a Ray worker that dies and a lost task each become an error row while the sweep finishes;
an interrupted sweep cancels its runs and resumes without lost or duplicated rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from diffquant.bench import BenchSettings, SweepOptions, run_sweep
from diffquant.bench.executors import LocalExecutor, make_executor
from diffquant.errors import DiffquantError
from diffquant.store import ResultsDB

MODEL = "zoo:tiny-flux"
SETTINGS = BenchSettings(prompts=("a red circle on a blue background",), seeds=(0,), steps=2, height=64,
                         width=64, device="cpu", repeats=1)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    # Ray's switch for one-machine clusters (its default off Linux): every address is 127.0.0.1.
    # (ray.init(_node_ip_address="127.0.0.1") is turned into the machine's address by Ray.)
    saved = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    for attempt in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception:  # Ray waits a fixed 30 s for its raylet: a loaded machine can miss it
            ray.shutdown()
            if attempt == 2:
                raise
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        else:
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = saved


def _runs(db_path: Path) -> dict[str, Any]:
    with ResultsDB(db_path) as db:
        return {r.recipe: (r, db.images(r.id)) for r in db.runs()}


def _worker_pids() -> list[int]:
    """diffquant worker processes below this test process (the local cluster's Ray workers are)."""
    import psutil

    pids = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "diffquant.bench.worker" in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                pids.append(proc.pid)
        except psutil.Error:
            continue
    return pids


def _compare(local_db: Path, ray_db: Path, recipes: list[str]) -> None:
    """Same rows (keys, settings, status) and the same files, written by the driver into its own folder."""
    import numpy as np
    from safetensors import safe_open

    local, remote = _runs(local_db), _runs(ray_db)
    assert sorted(local) == sorted(remote) == sorted(recipes)
    for recipe, (lrow, limages) in local.items():
        rrow, rimages = remote[recipe]
        assert lrow.status == rrow.status == "ok", (lrow.error, rrow.error)
        assert (rrow.run_key, rrow.recipe_hash, rrow.sweep_id, rrow.settings) == \
               (lrow.run_key, lrow.recipe_hash, lrow.sweep_id, lrow.settings)
        assert "run.executor" not in lrow.metrics  # the local executor's rows are as before
        assert rrow.metrics["run.executor"] == "ray" and rrow.metrics["ray.node_ip"] == "127.0.0.1"
        assert rrow.metrics["ray.num_cpus"] == 2  # on CPU a run takes a whole node
        assert len(limages) == len(rimages) >= 1
        for li, ri in zip(limages, rimages):
            assert (li.prompt_index, li.seed) == (ri.prompt_index, ri.seed)
            assert Path(ri.path).is_relative_to(ray_db.parent / "images") and Path(ri.path).is_file()
            assert Path(li.path).read_bytes() == Path(ri.path).read_bytes(), recipe
            # safetensors writes its metadata in a per-process hash order: compare contents, not bytes
            with safe_open(li.latents_path, "np") as a, safe_open(ri.latents_path, "np") as b:
                assert a.metadata() == b.metadata()
                assert np.array_equal(a.get_tensor("latents"), b.get_tensor("latents")), recipe
    assert not list(ray_db.parent.rglob(".*.tmp"))


_FAKE_WORKER = """
import hashlib, json, os, sys
from pathlib import Path
import numpy as np
from safetensors.numpy import save_file
spec = json.load(open(sys.argv[1]))
folder = Path(spec["image_dir"]); folder.mkdir(parents=True, exist_ok=True)
digest = hashlib.sha256(spec["recipe"].encode()).digest()
png, lat = folder / "p000-s0.png", folder / "p000-s0.latents.safetensors"
png.write_bytes(digest * 1000)
save_file({"latents": np.random.default_rng(digest[0]).standard_normal((1, 16, 8, 8), dtype=np.float32)}, str(lat),
          metadata={"recipe": spec["recipe"], "seed": "0"})
result = {"status": "ok", "error": None, "env": {"fake": True},
          "metrics": {"omp_threads": os.environ.get("OMP_NUM_THREADS")},
          "images": [{"prompt": spec["prompts"][0], "prompt_index": 0, "seed": 0, "path": str(png),
                      "latents_path": str(lat)}]}
open(spec["result_path"], "w").write(json.dumps(result))
"""


def test_files_come_back_to_the_driver(ray_cluster: str, tmp_path: Path) -> None:
    """Fast: a stand-in worker writes an image and latents on the node; the driver gets them."""
    fake = tmp_path / "fake_worker.py"
    fake.write_text(_FAKE_WORKER)
    recipes = ["bf16", "torchao-int8wo", "quanto-int8"]
    base = SweepOptions(model=MODEL, recipes=recipes[1:], settings=SETTINGS, db_path=tmp_path / "local" / "r.db",
                        worker_argv=[sys.executable, str(fake)])
    run_sweep(base)
    report = run_sweep(SweepOptions(**{**base.__dict__, "db_path": tmp_path / "ray" / "r.db",
                                       "executor": f"ray:{ray_cluster}"}))
    assert not report.failed
    _compare(tmp_path / "local" / "r.db", tmp_path / "ray" / "r.db", recipes)
    ray_rows = _runs(tmp_path / "ray" / "r.db")
    assert all(row.metrics["omp_threads"] == "2" for row, _ in ray_rows.values())  # Ray: threads = its CPUs


@pytest.mark.slow  # six real runs: minutes on 2 shared cores
def test_same_rows_and_images_as_local(ray_cluster: str, tmp_path: Path) -> None:
    """zoo:tiny-flux, 3 recipes, through the CLI: locally and on Ray; PNGs byte-identical."""
    from diffquant.cli import main

    tiny = ["--prompt", SETTINGS.prompts[0], "--seeds", "0", "--steps", "2", "--size", "64x64", "--repeats", "1",
            "--device", "cpu", "--timeout", "600", "--no-report", "--recipes", "torchao-int8wo,quanto-int8"]
    local_db, ray_db = tmp_path / "local" / "r.db", tmp_path / "ray" / "r.db"
    assert main(["bench", MODEL, "--db", str(local_db), *tiny]) == 0
    assert main(["bench", MODEL, "--db", str(ray_db), "--executor", f"ray:{ray_cluster}", *tiny]) == 0
    _compare(local_db, ray_db, ["bf16", "quanto-int8", "torchao-int8wo"])
    for row, _ in _runs(ray_db).values():
        assert row.env["packages"]["torch"] and row.metrics["weights.total_bytes"] > 0  # measured on the node


def test_failures_become_error_rows_and_the_sweep_finishes(ray_cluster: str, tmp_path: Path) -> None:
    db_path = tmp_path / "r.db"
    options = SweepOptions(
        model=MODEL, settings=SETTINGS, db_path=db_path, timeout_s=4, executor="ray", cpus_per_run=1,
        recipes=["nonsense-recipe", "torchao-int8wo", "quanto-int8", "quanto-int4"],
        faults={"bf16": "segfault", "torchao-int8wo": "hang", "quanto-int8": "ray-exit", "quanto-int4": "ray-lost"})
    events: list[str] = []
    report = run_sweep(options, on_event=lambda kind, item, data: events.append(f"{kind}:{item.name}"))
    runs = {name: row for name, (row, _) in _runs(db_path).items()}
    assert sorted(runs) == sorted(["bf16", "nonsense-recipe", "torchao-int8wo", "quanto-int8", "quanto-int4"])
    assert all(r.status == "error" for r in runs.values()) and len(report.failed) == 5
    assert "SIGSEGV" in runs["bf16"].error and runs["bf16"].metrics["run.outcome"] == "crashed"
    assert "injecting fault" in runs["bf16"].error  # the worker's log tail came back from the node
    assert "timed out after 4 s" in runs["torchao-int8wo"].error
    assert runs["torchao-int8wo"].metrics["run.outcome"] == "timeout"
    assert runs["nonsense-recipe"].metrics["run.outcome"] == "invalid"
    died, lost = runs["quanto-int8"], runs["quanto-int4"]
    assert died.metrics["run.outcome"] == lost.metrics["run.outcome"] == "lost"
    assert died.metrics["ray.error"] == "WorkerCrashedError" and "WorkerCrashedError" in died.error
    assert lost.metrics["ray.error"] == "ObjectLostError" and "simulated" in lost.error
    assert "Ray lost this run" in lost.error and "--retry-errors" in lost.error
    assert sum(e.startswith("finish:") for e in events) == 5
    assert not any((tmp_path / "images").rglob("*.png"))  # failed runs keep no files

    # --retry-errors re-runs the lost run (now healthy: it fails fast in its worker) in place.
    retry = SweepOptions(**{**options.__dict__, "recipes": ["quanto-int4"], "retry_errors": True,
                            "faults": {"bf16": "exit", "quanto-int4": "raise"}})
    run_sweep(retry)
    runs2 = {name: row for name, (row, _) in _runs(db_path).items()}
    assert len(runs2) == 5 and runs2["quanto-int4"].metrics["run.outcome"] == "failed"
    assert "injected fault" in runs2["quanto-int4"].error


_SWEEP_SCRIPT = """
import json, sys
from pathlib import Path
from diffquant.bench import BenchSettings, SweepOptions, run_sweep
settings = BenchSettings(prompts=("a red circle on a blue background",), seeds=(0,), steps=2, height=64, width=64,
                         device="cpu", repeats=1)
run_sweep(SweepOptions(model="zoo:tiny-flux", recipes=["torchao-int8wo"], settings=settings, db_path=Path(sys.argv[1]),
                       timeout_s=120, executor=sys.argv[2], cpus_per_run=1, faults=json.loads(sys.argv[3])))
"""


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_driver_cancels_runs_and_resumes(ray_cluster: str, tmp_path: Path, how: signal.Signals) -> None:
    """A driver process joins the cluster by address (ray:HOST:PORT) and is interrupted while its
    second run hangs on Ray: the run is cancelled, its worker killed, no partial row stays; a
    restarted sweep runs only what is missing."""
    db_path = tmp_path / "r.db"
    faults = {"bf16": "raise", "torchao-int8wo": "hang"}
    proc = subprocess.Popen([sys.executable, "-c", _SWEEP_SCRIPT, str(db_path), f"ray:{ray_cluster}",
                             json.dumps(faults)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (_runs(db_path) if db_path.exists() else {}):
        time.sleep(0.3)
    while time.monotonic() < deadline and not _worker_pids():  # the hanging run is under way
        time.sleep(0.3)
    assert _worker_pids(), "the second run never started"
    time.sleep(0.5)
    proc.send_signal(how)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0 and b"KeyboardInterrupt" in stderr
    deadline = time.monotonic() + 30
    while _worker_pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _worker_pids(), "a worker outlived its interrupted sweep"
    runs = _runs(db_path)
    assert list(runs) == ["bf16"] and not any((tmp_path / "images").rglob("*"))
    first_id = runs["bf16"][0].id

    resumed = run_sweep(SweepOptions(model=MODEL, recipes=["torchao-int8wo"], settings=SETTINGS, db_path=db_path,
                                     timeout_s=120, executor="ray", cpus_per_run=1,
                                     faults={"torchao-int8wo": "raise"}))
    assert [p.name for p in resumed.skipped] == ["bf16"] and [p.name for p in resumed.ran] == ["torchao-int8wo"]
    with ResultsDB(db_path) as db:
        rows = db.runs()
    assert [r.recipe for r in rows] == ["bf16", "torchao-int8wo"] and rows[0].id == first_id
    assert "injected fault" in rows[1].error


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffquant.bench.executor_ray import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(DiffquantError, match=r"diffquant\[ray\]"):
        import_ray()
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "ray" else object())
    with pytest.raises(DiffquantError, match=r"pip install 'diffquant\[ray\]'"):  # before any sweep starts
        make_executor("ray")


def test_executor_choice_and_resources() -> None:
    from diffquant.bench.executor_ray import RayExecutor

    assert isinstance(make_executor("local"), LocalExecutor)
    with pytest.raises(DiffquantError, match="Unknown executor"):
        make_executor("dask")
    with pytest.raises(DiffquantError, match="Ray executor only"):
        make_executor("local", cpus_per_run=2)
    executor = make_executor("ray:10.0.0.1:6379", device="cuda")
    assert isinstance(executor, RayExecutor) and executor.address == "10.0.0.1:6379"
    nodes = [{"Alive": True, "Resources": {"CPU": 32.0, "GPU": 8.0}},
             {"Alive": True, "Resources": {"CPU": 16.0}},
             {"Alive": False, "Resources": {"CPU": 96.0, "GPU": 8.0}}]
    assert executor.resources(nodes) == {"num_gpus": 1.0, "num_cpus": 4.0}  # a GPU and its share of CPUs
    assert RayExecutor(device="cpu").resources(nodes) == {"num_gpus": 0.0, "num_cpus": 32.0}  # a whole node
    assert RayExecutor(device="cpu", cpus_per_run=2).resources(nodes)["num_cpus"] == 2.0
    with pytest.raises(DiffquantError, match="No node of the Ray cluster can take a run needing 1 CPU and 1 GPU"):
        executor.resources(nodes[1:2])
    with pytest.raises(DiffquantError, match="Ray assigns|gets its GPU from Ray"):
        RayExecutor(device="cuda:1")



def test_ray_is_imported_only_when_used() -> None:
    probe = ("from diffquant.cli import build_parser\nbuild_parser().format_help()\n"
             "from diffquant.bench.executors import make_executor\nmake_executor('local')\n"
             "import diffquant.bench.executor_ray\n"
             "import sys\nprint('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
