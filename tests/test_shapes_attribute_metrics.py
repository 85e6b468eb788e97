"""The zoo:shapes metrics beside adherence: shape accuracy and all-attributes-right, per image 0/1,
on scenes drawn by the generator the scorer was trained on (the ground truth of their captions)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from diffquant.quality import learned
from diffquant.quality.batch import Batch
from diffquant.quality.bootstrap import bootstrap_mean
from diffquant.quality.registry import METRICS, MetricOptions, MetricUnavailable
from diffquant.zoo.shapes import data
from diffquant.zoo.shapes.model import SCORER_FILE

pytestmark = pytest.mark.skipif(not Path(SCORER_FILE).is_file(), reason="the shipped shapes scorer is missing")

NAMES = ("shapes-adherence", "shapes-shape", "shapes-all-correct")


def _scene(shape: str, colour: str, background: str, position: str = "top left", size: str = "small") -> data.Scene:
    return data.Scene(shape=shape, colour=colour, background=background, position=position, size=size)


# Prompts that name all five attributes, so a wrong shape costs exactly 1/5 of adherence.
TRUTH = [_scene("square", "blue", "gray"), _scene("triangle", "orange", "black", "bottom right", "large"),
         _scene("circle", "red", "white", "center", "large"), _scene("cross", "yellow", "blue", "left"),
         _scene("diamond", "purple", "green", "top right", "large"), _scene("square", "red", "black", "bottom")]


def _score(scenes: list[data.Scene], prompts: list[str], model: str = "zoo:shapes") -> dict[str, list[float]]:
    batch = Batch(model=model, prompts=prompts, image_paths=[Path(f"{i}.png") for i in range(len(scenes))],
                  preloaded=[data.render(s) for s in scenes])
    return {name: METRICS.get(name).load(MetricOptions())(batch) for name in NAMES}


def test_ground_truth_scenes_score_one_on_every_metric() -> None:
    got = _score(TRUTH, [s.caption for s in TRUTH])
    for name in NAMES:
        assert got[name] == [1.0] * len(TRUTH), name


def test_a_wrong_shape_scores_zero_on_shape_while_adherence_stays_high() -> None:
    # Negative control: each prompt's scene drawn with another shape (a circle for "square", ...),
    # colour, background, position and size right.
    other = {"square": "circle", "triangle": "square", "circle": "cross", "cross": "diamond", "diamond": "triangle"}
    wrong = [replace(s, shape=other[s.shape]) for s in TRUTH]
    got = _score(wrong, [s.caption for s in TRUTH])
    assert got["shapes-shape"] == [0.0] * len(TRUTH)
    assert got["shapes-all-correct"] == [0.0] * len(TRUTH)
    assert got["shapes-adherence"] == pytest.approx([0.8] * len(TRUTH))  # 4 of the 5 named attributes
    # what the single number hid: adherence 0.8, shape accuracy 0
    assert learned.shapes_reads([data.render(wrong[0])])[0]["colour"] == "blue"


def test_all_correct_sees_the_other_attributes_and_the_metrics_bootstrap() -> None:
    # right shape, wrong colour on every other image: shape stays 1, all-correct drops to 1/2
    scenes = [replace(s, colour="green" if s.colour != "green" and s.background != "green" else "red")
              if i % 2 else s for i, s in enumerate(TRUTH)]
    got = _score(scenes, [s.caption for s in TRUTH])
    assert got["shapes-shape"] == [1.0] * len(TRUTH)
    assert got["shapes-all-correct"] == [float(i % 2 == 0) for i in range(len(TRUTH))]
    est = bootstrap_mean(got["shapes-all-correct"], seed=0)
    assert est is not None and est.mean == pytest.approx(0.5) and est.ci_low < 0.5 < est.ci_high


def test_the_scorer_reads_each_image_once_for_the_three_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffquant.zoo.shapes import scorer

    calls: list[int] = []
    real = scorer.predict

    def counting(images: list[Any], scorer_net: Any = None) -> list[dict[str, str]]:
        calls.append(len(images))
        return real(images, scorer_net)

    monkeypatch.setattr(scorer, "predict", counting)
    monkeypatch.setattr(learned, "_SHAPES_READS", type(learned._SHAPES_READS)())
    scenes = [replace(s, dx=0.5) for s in TRUTH]  # pixels not read before in this process
    _score(scenes, [s.caption for s in scenes])
    assert calls == [len(scenes)]
    changed = [replace(scenes[0], colour="green")]  # new pixels are read again
    _score(changed, [scenes[0].caption])
    assert calls == [len(scenes), 1]


def test_other_models_and_shapeless_prompts_are_unavailable() -> None:
    with pytest.raises(MetricUnavailable, match="zoo:shapes"):
        _score(TRUTH[:1], [TRUTH[0].caption], model="zoo:tiny-flux")
    batch = Batch(model="zoo:shapes", prompts=["a blue thing on a gray background"], image_paths=[Path("a.png")],
                  preloaded=[data.render(TRUTH[0])])
    with pytest.raises(MetricUnavailable, match="name no shape"):
        METRICS.get("shapes-shape").load(MetricOptions())(batch)
    # all-correct judges what a prompt names (here only the background, which is right), as adherence
    # does; a prompt naming nothing scores 0 on both
    batch = Batch(model="zoo:shapes", prompts=["a blue thing on a gray background", "nothing at all"],
                  image_paths=[Path("a.png"), Path("b.png")], preloaded=[data.render(TRUTH[0])] * 2)
    assert METRICS.get("shapes-all-correct").load(MetricOptions())(batch) == [1.0, 0.0]
    assert METRICS.get("shapes-adherence").load(MetricOptions())(batch) == [1.0, 0.0]


def test_the_metrics_agree_with_the_scorers_own_functions() -> None:
    from diffquant.zoo.shapes.scorer import attribute_accuracy, score_images

    rng = np.random.default_rng(7)
    scenes = [data.sample_scene(rng) for _ in range(6)]
    prompts = [data.sample_scene(rng).caption if i % 3 == 0 else s.caption for i, s in enumerate(scenes)]
    images = [data.render(s) for s in scenes]
    got = _score(scenes, prompts)
    assert got["shapes-adherence"] == pytest.approx(score_images(images, prompts))
    assert np.mean(got["shapes-shape"]) == pytest.approx(attribute_accuracy(images, prompts)["shape"], abs=1e-4)
    assert got["shapes-all-correct"] == [float(v == 1.0) for v in got["shapes-adherence"]]
    assert 0.0 < np.mean(got["shapes-all-correct"]) < 1.0  # the mismatched prompts are caught


def test_scored_database_stores_and_exports_the_three_metrics(tmp_path: Path) -> None:
    """Through the real path: a zoo:shapes results database, `score_database` (all metrics, as
    `diffquant bench` does), then the JSON export that `diffquant results --format json` prints."""
    import json

    from diffquant.quality import score_database
    from diffquant.quality.store import read_quality
    from diffquant.store import ImageRow, ResultsDB, RunRow, render

    prompts = [s.caption for s in TRUTH[:3]]
    settings = {"prompts": prompts, "seeds": [0], "steps": 2, "height": 64, "width": 64, "guidance_scale": None,
                "device": "cpu", "repeats": 1, "warmup": 0}
    other = {"square": "circle", "triangle": "square", "circle": "cross"}
    runs = {"bf16": TRUTH[:3], "bnb-nf4": [replace(s, shape=other[s.shape]) for s in TRUTH[:3]]}
    db_path = tmp_path / "results.db"
    with ResultsDB(db_path) as db:
        for k, (recipe, scenes) in enumerate(runs.items()):
            rows = []
            for i, scene in enumerate(scenes):
                path = tmp_path / f"{recipe}-{i}.png"
                data.render(scene).save(path)
                rows.append(ImageRow(0, 0, prompts[i], i, 0, str(path), None))
            db.record_run(RunRow(0, "sweep-1", "zoo:shapes", recipe, f"hash{k}", settings, "ok", None,
                                 {"gen.peak_rss_mib": 100.0}, {}, "2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z",
                                 run_key=f"key{k}"), rows)
    score_database(db_path, metrics=list(NAMES))
    with ResultsDB(db_path) as db:
        by_recipe = {r.id: r.recipe for r in db.runs()}
        quality = {by_recipe[k]: v for k, v in read_quality(db.connection).items()}
        exported = json.loads(render(db, db.runs(), "json", "bf16"))
    assert {n: quality["bf16"][n].mean for n in NAMES} == {n: 1.0 for n in NAMES}
    nf4 = quality["bnb-nf4"]
    assert nf4["shapes-shape"].mean == 0.0 and nf4["shapes-all-correct"].mean == 0.0
    assert nf4["shapes-adherence"].mean == pytest.approx(0.8)
    assert nf4["shapes-shape"].delta_mean == pytest.approx(-1.0)  # paired with the reference's images
    runs_json = exported["runs"] if isinstance(exported, dict) else exported
    nf4_json = next(r for r in runs_json if r["recipe"] == "bnb-nf4")
    assert set(NAMES) <= set(nf4_json["quality"])
    from diffquant.figures import metric_title
    from diffquant.report.collect import collect

    sweep = collect(db_path).sweeps[0]  # what report.html lays out, one section per metric
    assert [m.name for m in sweep.metrics if m.name in NAMES] == list(NAMES)
    assert metric_title("shapes-shape") == "Shape accuracy"
