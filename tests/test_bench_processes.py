"""bench --processes N: each recipe measured in N fresh worker processes, in rounds, filed as one
row whose latency interval also covers how much a fresh worker's speed differs. Stand-in workers
(no torch) for the sweep; simulated latencies for the interval."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from diffquant.bench import BenchSettings, SweepOptions, run_sweep
from diffquant.bench.jobs import Job, StartHandler
from diffquant.bench.runner import WorkerOutcome, run_worker
from diffquant.bench.spec import run_key, sweep_id
from diffquant.cli import main as cli_main
from diffquant.quality.bootstrap import bootstrap_ratio, bootstrap_ratio_nested
from diffquant.store import ResultsDB
from diffquant.store.summary import fmt_latency, summary_rows

MODEL = "zoo:tiny-flux"
SETTINGS = BenchSettings(prompts=("a red circle",), seeds=(0,), steps=2, height=64, width=64, device="cpu",
                         repeats=3, processes=3)

# Each process appends what it was asked to a log, and reports latencies that identify it: the
# recipe's base (bf16 1 s, else 2 s) times 1 + 0.1 * (how many processes of it ran before).
_WORKER = """
import json, os, sys
spec = json.load(open(sys.argv[1]))
log = LOG
lines = open(log).read().splitlines() if os.path.exists(log) else []
nth = sum(json.loads(line)["recipe"] == spec["recipe"] for line in lines)
open(log, "a").write(json.dumps({"recipe": spec["recipe"], "save_images": spec["save_images"]}) + "\\n")
if spec["recipe"] in FAIL_AT and nth == FAIL_AT[spec["recipe"]]:
    sys.exit(3)
base = (1.0 if spec["recipe"] == "bf16" else 2.0) * (1 + 0.1 * nth)
samples = [base * (1 + 0.001 * i) for i in range(spec["repeats"])]
images = []
if spec["save_images"]:
    os.makedirs(spec["image_dir"], exist_ok=True)
    png = os.path.join(spec["image_dir"], "p000-s0.png")
    open(png, "wb").write(b"png")
    images = [{"prompt": spec["prompts"][0], "prompt_index": 0, "seed": 0, "path": png, "latents_path": None}]
metrics = {"call.latency_s.samples": samples, "call.latency_s.p50": sorted(samples)[len(samples) // 2],
           "call.latency_s.n": len(samples), "gen.model_peak_rss_mib": 100.0 + nth,
           "host.loadavg_1m.max": 1.0 + nth, "host.contended": int(nth == 1)}
bad_hash = spec["recipe"] in BAD_HASH_AT and nth == BAD_HASH_AT[spec["recipe"]]
result = {"status": "ok", "error": None, "images": images, "env": {"fake": True}, "metrics": metrics,
          "recipe": spec["recipe"], "recipe_hash": "0123456789abcdef" if bad_hash else spec["recipe_hash"]}
open(spec["result_path"], "w").write(json.dumps(result))
"""


class EagerExecutor:
    """Takes every job before running any, as an executor that submits ahead (Ray) may."""

    name = "eager"

    def run(self, jobs: Iterable[Job], on_start: StartHandler) -> Iterator[tuple[Job, WorkerOutcome]]:
        taken = list(jobs)
        for job in taken:
            on_start(job)
            yield job, run_worker(job.spec, job.workdir, timeout_s=job.timeout_s, argv=job.argv)


class InterruptingExecutor:
    """Runs jobs here, one at a time, and is interrupted (Ctrl-C) as it starts job number ``at``."""

    name = "interrupting"

    def __init__(self, at: int) -> None:
        self.at = at

    def run(self, jobs: Iterable[Job], on_start: StartHandler) -> Iterator[tuple[Job, WorkerOutcome]]:
        for number, job in enumerate(jobs):
            if number == self.at:
                raise KeyboardInterrupt
            on_start(job)
            yield job, run_worker(job.spec, job.workdir, timeout_s=job.timeout_s, argv=job.argv)


def _sweep(tmp_path: Path, fail_at: dict[str, int] | None = None, settings: BenchSettings = SETTINGS,
           executor: Any = "local", bad_hash_at: dict[str, int] | None = None
           ) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
    log = tmp_path / "log.jsonl"
    fake = tmp_path / "fake_worker.py"
    fake.write_text(_WORKER.replace("LOG", json.dumps(str(log))).replace("FAIL_AT", json.dumps(fail_at or {}))
                    .replace("BAD_HASH_AT", json.dumps(bad_hash_at or {})))
    options = SweepOptions(model=MODEL, recipes=["bf16+vae-tiling"], settings=settings, db_path=tmp_path / "r.db",
                           worker_argv=[sys.executable, str(fake)], executor=executor)
    report = run_sweep(options)
    with ResultsDB(tmp_path / "r.db") as db:
        rows = {r.recipe: r for r in db.runs()}
    started = [json.loads(line) for line in log.read_text().splitlines()]
    return report.exit_status, rows, started


def test_processes_run_in_rounds_and_file_one_row(tmp_path: Path) -> None:
    status, rows, started = _sweep(tmp_path)
    assert status == 0 and sorted(rows) == ["bf16", "bf16+vae-tiling"]
    # rounds: the reference and the recipe alternate; only each recipe's first process saves images
    assert [s["recipe"] for s in started] == ["bf16", "bf16+vae-tiling"] * 3
    assert [s["save_images"] for s in started] == [True, True, False, False, False, False]
    m = rows["bf16+vae-tiling"].metrics
    assert m["run.processes"] == 3 and m["call.latency_s.n"] == 9
    assert m["call.latency_s.process_p50s"] == pytest.approx([2.002, 2.2022, 2.4024])
    assert [len(g) for g in m["call.latency_s.by_process"]] == [3, 3, 3]
    assert m["call.latency_s.p50"] == pytest.approx(2.2022)  # pooled over the nine calls
    assert m["gen.model_peak_rss_mib"] == 100.0  # memory: the first process's
    assert m["host.loadavg_1m.max"] == 3.0 and m["host.contended"] == 1  # host: the worst process's
    with ResultsDB(tmp_path / "r.db") as db:
        images = db.images(rows["bf16+vae-tiling"].id)
    assert len(images) == 1 and Path(images[0].path).is_file()


def test_an_executor_that_takes_jobs_ahead_still_runs_every_process(tmp_path: Path) -> None:
    status, rows, started = _sweep(tmp_path, executor=EagerExecutor())
    assert status == 0 and [s["recipe"] for s in started] == ["bf16", "bf16+vae-tiling"] * 3
    assert all(r.metrics["run.processes"] == 3 for r in rows.values())


def test_a_failed_process_makes_the_row_that_failure_and_stops_its_recipe(tmp_path: Path) -> None:
    status, rows, started = _sweep(tmp_path, fail_at={"bf16+vae-tiling": 1})
    assert status == 1
    row = rows["bf16+vae-tiling"]
    assert not row.ok and row.error.startswith("process 2 of 3: ") and row.metrics["run.outcome"] == "failed"
    assert rows["bf16"].ok and rows["bf16"].metrics["run.processes"] == 3
    # no third process for the failed recipe; its first process's images are gone with it
    assert [s["recipe"] for s in started] == ["bf16", "bf16+vae-tiling", "bf16", "bf16+vae-tiling", "bf16"]
    leftovers = [p for p in (tmp_path / "images").rglob("*") if p.is_file() and "vae-tiling" in str(p)]
    assert leftovers == []


def test_a_later_process_that_ran_another_recipe_fails_the_row(tmp_path: Path) -> None:
    status, rows, _ = _sweep(tmp_path, bad_hash_at={"bf16+vae-tiling": 2})
    row = rows["bf16+vae-tiling"]
    assert status == 1 and not row.ok and row.metrics["run.outcome"] == "recipe-mismatch"
    assert row.error.startswith("process 3 of 3: ") and "0123456789abcdef" in row.error


def test_an_interrupted_sweep_keeps_no_files_and_runs_the_unfinished_recipes_again(tmp_path: Path) -> None:
    # interrupted as the third round starts: both recipes have two processes done, no row written
    with pytest.raises(KeyboardInterrupt):
        _sweep(tmp_path, executor=InterruptingExecutor(at=4))
    with ResultsDB(tmp_path / "r.db") as db:
        assert db.runs() == []
    assert not any(p.is_file() for p in (tmp_path / "images").rglob("*"))
    status, rows, started = _sweep(tmp_path)
    assert status == 0 and all(r.metrics["run.processes"] == 3 for r in rows.values())
    assert [s["recipe"] for s in started] == ["bf16", "bf16+vae-tiling"] * 5  # 4 before, 6 again


def test_one_process_is_the_sweep_it_always_was(tmp_path: Path) -> None:
    single = replace(SETTINGS, processes=1)
    assert "processes" not in single.identity() and SETTINGS.identity()["processes"] == 3
    assert sweep_id(MODEL, single) != sweep_id(MODEL, SETTINGS)
    assert run_key(MODEL, "h", single) != run_key(MODEL, "h", SETTINGS)
    status, rows, started = _sweep(tmp_path, settings=single)
    assert status == 0 and [s["recipe"] for s in started] == ["bf16", "bf16+vae-tiling"]
    assert "run.processes" not in rows["bf16"].metrics and "call.latency_s.by_process" not in rows["bf16"].metrics


def test_the_table_pools_processes_and_widens_the_ratio_interval(tmp_path: Path) -> None:
    _, rows, _ = _sweep(tmp_path)
    table = {r["recipe"]: r for r in summary_rows(list(rows.values()))}
    row = table["bf16+vae-tiling"]
    assert fmt_latency(row).endswith("n=9/3 proc")
    # Both recipes' processes slow down alike (1.0, 1.1, 1.2): the ratio is 2 in every round, but
    # drawn processes need not pair up, so the interval is wide; pooled as one worker it is narrow.
    assert row["inference_s.ratio_low"] < 1.9 and row["inference_s.ratio_high"] > 2.1
    pooled = bootstrap_ratio(rows["bf16+vae-tiling"].metrics["call.latency_s.samples"],
                             rows["bf16"].metrics["call.latency_s.samples"])
    assert pooled is not None and pooled.ci_high - pooled.ci_low < row["inference_s.ratio_high"] - row["inference_s.ratio_low"]


def test_one_group_each_is_the_unnested_interval() -> None:
    rng = np.random.default_rng(1)
    a, b = list(rng.normal(2.0, 0.05, 7)), list(rng.normal(1.0, 0.02, 6))
    nested, plain = bootstrap_ratio_nested([a], [b]), bootstrap_ratio(a, b)
    assert nested is not None and plain is not None
    assert (nested.mean, nested.ci_low, nested.ci_high) == (plain.mean, plain.ci_low, plain.ci_high)


def test_the_nested_interval_covers_a_fresh_sweep_where_one_workers_does_not() -> None:
    """Simulated sweeps: each process of a recipe runs at its own speed (10% spread between fresh
    processes, 1% between one process's calls), the true ratio is 2. The interval over one worker's
    calls misses the truth most of the time (the negative control); the interval over three or five
    processes, resampling processes then calls, holds it in most sweeps."""
    rng = np.random.default_rng(7)

    def process(base: float, calls: int = 5) -> list[float]:
        speed = base * rng.normal(1.0, 0.10)
        return list(speed * rng.normal(1.0, 0.01, calls))

    trials, one_worker, three, five, uneven = 120, 0, 0, 0, 0
    for _ in range(trials):
        mine, ref = [process(2.0) for _ in range(5)], [process(1.0) for _ in range(5)]
        single = bootstrap_ratio(mine[0], ref[0], resamples=400)
        nested = bootstrap_ratio_nested(mine, ref, resamples=400)
        # processes that made different numbers of calls (time-based steady calls)
        ragged = bootstrap_ratio_nested([process(2.0, n) for n in (4, 5, 6, 5, 7)], ref, resamples=400)
        assert single is not None and nested is not None and ragged is not None
        fewer = bootstrap_ratio_nested(mine[:3], ref[:3], resamples=400)
        assert fewer is not None
        one_worker += single.contains(2.0)
        three += fewer.contains(2.0)
        five += nested.contains(2.0)
        uneven += ragged.contains(2.0)
    assert one_worker / trials < 0.35
    assert three / trials > 0.7 and five / trials > 0.75 and uneven / trials > 0.75


@pytest.mark.parametrize("text", ["0", "three", "101"])
def test_processes_must_be_a_sensible_count(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", "zoo:tiny-flux", "--processes", text])
    assert exit_info.value.code == 2
    assert "--processes" in capsys.readouterr().err


def test_processes_without_steady_calls_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["bench", "zoo:tiny-flux", "--processes", "3", "--repeats", "0", "--db", str(tmp_path / "r.db")])
    assert code != 0 and "--repeats 0" in capsys.readouterr().err
    assert not (tmp_path / "r.db").exists()
