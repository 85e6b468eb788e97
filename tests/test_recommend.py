"""``diffquant recommend``: Pareto-best recipes under a budget, from measured runs (a synthetic
database) and plan's predictions; the errors a user can make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_quality_fixtures import make_db

from diffquant.cli import main
from diffquant.plan.recommend import Candidate, QualityValue, dominates, recommend

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def scored_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffquant.quality import score_database

    db = make_db(tmp_path_factory.mktemp("db"))
    score_database(db, metrics=["psnr"])
    return db


def test_measured_runs_win_and_every_exclusion_has_a_reason(scored_db: Path) -> None:
    # The fixture's runs (peak RSS): bf16 1400 MiB, quanto-int8 1000, quanto-int4 820, bf16+compile 1450;
    # bnb-nf4 failed. A 1.2 GiB budget leaves the two quanto runs.
    result = recommend("zoo:tiny-flux", 1200 * MIB, device="cpu", db_path=scored_db, recipes=["bf16", "gguf-q8_0"])
    names = [c.recipe for c in result.recommended]
    assert names[0] == "quanto-int8"  # better PSNR than quanto-int4 at more memory: both on the front
    assert "quanto-int4" in names
    first = result.recommended[0]
    assert first.source == "measured" and first.quality is not None and first.latency_s == pytest.approx(1.10)
    alt = next(c for c in result.recommended if c.recipe == "quanto-int4")
    assert alt.tradeoff and "latency" in alt.tradeoff and "psnr" in alt.tradeoff
    excluded = {c.recipe: c.excluded for c in result.excluded}
    assert "over the" in excluded["bf16"] and "measured" in excluded["bf16"]
    assert "failed" in excluded["bnb-nf4"]
    predicted = next(c for c in result.recommended + result.excluded if c.recipe == "gguf-q8_0")
    assert predicted.source == "predicted"


def test_min_quality_and_max_latency_exclude(scored_db: Path) -> None:
    result = recommend("zoo:tiny-flux", 10 * 2**30, device="cpu", db_path=scored_db, recipes=["bf16"],
                       max_latency_s=1.2, min_quality=("psnr", 30.0))
    excluded = {c.recipe: c.excluded for c in result.excluded}
    assert "--max-latency" in excluded["quanto-int4"]
    assert all(c.recipe != "quanto-int4" for c in result.recommended)


def test_nothing_fits_names_the_smallest(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["recommend", "zoo:tiny-flux", "--budget", "1MiB", "--device", "cpu",
                 "--recipes", "bf16,bnb-nf4,quanto-int4"])
    out = capsys.readouterr().out
    assert code == 1
    assert "Nothing fits" in out and "The smallest recipe is" in out
    assert main(["recommend", "zoo:tiny-flux", "--budget", "1MiB", "--device", "cpu", "--recipes",
                 "bf16,bnb-nf4", "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["fits"] is False and data["smallest"]["recipe"] in ("bf16", "bnb-nf4")
    assert data["smallest"]["memory_bytes"] > 2**20


def test_predicted_only_prefers_no_offload(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", "zoo:tiny-flux", "--budget", "16GB", "--device", "cpu", "--recipes",
                 "bf16,bnb-nf4,bf16+offload-group-leaf(disk),offload-model", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["recommended"][0]["recipe"] == "bf16" and data["recommended"][0]["source"] == "predicted"
    excluded = {c["recipe"]: c["excluded"] for c in data["excluded"]}
    assert "cannot run on cpu" in next(v for k, v in excluded.items() if "offload-model" in k)


@pytest.mark.parametrize("args,message", [
    (["zoo:nope", "--budget", "16GB"], "Unknown zoo model"),
    (["zoo:tiny-flux", "--budget", "sixteen"], "e.g. --budget 16GB"),
    (["zoo:tiny-flux", "--budget", "16GB", "--min-quality", "psnr"], "METRIC=VALUE"),
])
def test_user_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", *args]) == 2
    assert message in capsys.readouterr().err


def test_empty_or_missing_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from diffquant.store import ResultsDB

    empty = tmp_path / "empty.db"
    ResultsDB(empty).close()
    assert main(["recommend", "zoo:tiny-flux", "--budget", "16GB", "--db", str(empty)]) == 2
    assert "holds no runs" in capsys.readouterr().err
    assert main(["recommend", "zoo:tiny-flux", "--budget", "16GB", "--db", str(tmp_path / "none.db")]) == 2
    assert "No results database" in capsys.readouterr().err


def test_dominance_compares_like_with_like() -> None:
    q = QualityValue("psnr", 30.0, 29.0, 31.0, True)
    a = Candidate("a", "measured", 100, 1.0, q)
    b = Candidate("b", "measured", 200, 2.0, QualityValue("psnr", 25.0, 24.0, 26.0, True))
    c = Candidate("c", "measured", 300, 1.0, QualityValue("psnr", 40.0, 39.0, 41.0, True))
    p = Candidate("p", "predicted", 50)
    assert dominates(a, b) and not dominates(b, a)
    assert not dominates(a, c) and not dominates(c, a)  # a trade-off: both stay
    assert not dominates(a, p) and not dominates(p, a)  # nothing measured about p: never dropped
