"""The model's own memory: the worker's load phase subtracts a baseline taken before any weight is
read. A fake load that allocates a known number of MiB must come out as that many MiB; a baseline
taken at the wrong moment (after the weights) must not pass the same check. No torch needed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from diffquant.bench import phases
from diffquant.bench.measure import Sampler, proc_status, weight_file_rss_mib
from diffquant.bench.phases import Baseline, take_baseline
from diffquant.bench.spec import RunSpec

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")

FAKE_MIB = 96
# Allocator and interpreter noise around a 96 MiB allocation. Inside a full pytest run the process
# may have glibc's mmap threshold pinned by an earlier fp8-layerwise load (file_pages.fix_mmap_threshold),
# so large blocks an earlier test left for the collector go back to the system mid-measurement: seen
# 12.6 MiB once. The broken baseline (the negative control) reads ~0, far outside either way.
TOLERANCE_MIB = 24


class _Events:
    def send(self, *_: Any, **__: Any) -> None:
        pass


class _FakeLoad:
    """Stands in for load_pipeline: allocates (and touches) FAKE_MIB of anonymous memory."""

    def __init__(self, before: Any = None) -> None:
        self.held: list[bytearray] = []
        self.before = before

    def __call__(self, model: str, recipe: str, *, device: str, quant_cache_dir: Any) -> Any:
        from diffquant.pipeline import LoadInfo
        from diffquant.recipes import load_recipe

        block = bytearray(FAKE_MIB * 1024 * 1024)
        for i in range(0, len(block), 4096):  # touch every page: resident, not just reserved
            block[i] = 1
        self.held.append(block)
        if self.before is not None:
            self.before()
        pipe = type("FakePipe", (), {})()
        pipe._diffquant_load_info = LoadInfo(model_ref=model, model_dir=Path("."), recipe=load_recipe(recipe),
                                             device=device, quantized={})
        return pipe


def _load_metrics(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, broken: bool) -> dict[str, Any]:
    """Run the worker's load phase around a fake load; with ``broken`` the baseline is taken after
    the weights were read (what a worker that reads weights before its baseline would do)."""
    import diffquant.inspect
    import diffquant.pipeline
    from diffquant.bench.worker import Context, load_phase

    holder: dict[str, Baseline] = {}
    fake = _FakeLoad(before=(lambda: holder.update(b=take_baseline(proc_status, weight_file_rss_mib)))
                     if broken else None)
    monkeypatch.setattr(diffquant.pipeline, "load_pipeline", fake)
    monkeypatch.setattr(diffquant.inspect, "component_stats", lambda pipe: {})
    monkeypatch.setattr(diffquant.inspect, "disk_bytes", lambda path: 0)
    spec = RunSpec(model="zoo:none", recipe="bf16", device="cpu", prompts=["a"], seeds=[0], steps=1, height=64,
                   width=64, guidance_scale=None, result_path=str(tmp_path / "r.json"), image_dir=str(tmp_path))
    metrics: dict[str, Any] = {}
    # as the worker does: what earlier code freed is returned before the baseline (else the load
    # phase's own trim would hand it back and shrink the model's figure; order-dependent in pytest)
    import gc

    from diffquant.file_pages import trim_heap

    gc.collect()
    trim_heap()
    holder["b"] = take_baseline(proc_status, weight_file_rss_mib)
    with Sampler(interval_s=0.01, weight_files=weight_file_rss_mib) as sampler:
        ctx = Context(spec, metrics, {"images": []}, _Events(), sampler, holder["b"], None, False, None)

        class _Late:  # the broken baseline is only known once the fake load has run
            def __getattr__(self, name: str) -> Any:
                return getattr(holder["b"], name)

        ctx.baseline = _Late()
        load_phase(ctx)
    return metrics


def _near(value: float | None, target: float) -> bool:
    return value is not None and abs(value - target) <= TOLERANCE_MIB


def test_model_memory_is_the_load_minus_the_baseline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    m = _load_metrics(monkeypatch, tmp_path, broken=False)
    assert _near(m["load.model_anon_mib"], FAKE_MIB), m["load.model_anon_mib"]
    assert _near(m["load.model_rss_mib"], FAKE_MIB), m["load.model_rss_mib"]
    assert m["load.model_peak_anon_mib"] >= FAKE_MIB - TOLERANCE_MIB
    # the whole process holds the libraries too: the model's figure is much smaller
    assert m["load.rss_mib"] > m["load.model_rss_mib"] + 5


def test_a_baseline_taken_after_the_weights_fails_the_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    m = _load_metrics(monkeypatch, tmp_path, broken=True)
    assert not _near(m["load.model_anon_mib"], FAKE_MIB), m["load.model_anon_mib"]


def test_baseline_arithmetic() -> None:
    base = Baseline(rss_mib=500.0, rss_anon_mib=300.0, rss_file_mib=200.0, weight_files_mib=10.0)
    out = base.model("gen", 420.0, 420.0 + 60.0, peak=True)
    assert out == {"gen.model_peak_anon_mib": 120.0, "gen.model_peak_rss_mib": 170.0}
    assert base.model("load", None, None) == {"load.model_anon_mib": None, "load.model_rss_mib": None}


def test_baseline_imports_the_recipes_backends(tmp_path: Path) -> None:
    """The baseline counts the backends' libraries: they are imported before it, not by the load."""
    import json

    from diffquant.recipes import parse_recipe

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline",
                                                           "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}))
    pytest.importorskip("bitsandbytes")
    done = phases.import_for(parse_recipe("bnb-nf4"), tmp_path)
    assert "bitsandbytes" in done and "bitsandbytes" in sys.modules
    assert "bitsandbytes" not in phases.import_for(parse_recipe("bf16"), tmp_path)


def test_resident_weight_file_pages_per_component(tmp_path: Path) -> None:
    """What `load.rss_weight_files_mib.<component>` reports: pages of the component's files mapped
    and read now; none once the mapping is gone (what a quantized component must reach)."""
    import mmap

    from diffquant.bench.worker import _files_per_component

    folder = tmp_path / "transformer"
    folder.mkdir()
    weights = folder / "diffusion_pytorch_model.safetensors"
    size = 8 * 1024 * 1024
    weights.write_bytes(b"\1" * size)
    with open(weights, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    total = sum(mapped[i] for i in range(0, size, 4096))  # read every page through the mapping
    assert total == size // 4096
    held = _files_per_component(tmp_path)
    assert held["disk.transformer.weight_file_bytes"] == size
    assert held["load.rss_weight_files_mib.transformer"] == pytest.approx(8.0, abs=0.5)
    mapped.close()
    assert _files_per_component(tmp_path)["load.rss_weight_files_mib.transformer"] == 0.0


# -- the runtime residue: what outlives the model is the runtime's, not the model's ---------------
RUNTIME_MIB = 24
_RUNTIME_CACHE: list[bytearray] = []  # stands in for oneDNN's / ideep's shape-keyed primitive caches


def _touched(mib: int) -> bytearray:
    block = bytearray(mib * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return block


def _anon() -> float | None:
    return proc_status().get("rss_anon")


def _baseline_now() -> Baseline:
    import gc

    from diffquant.file_pages import trim_heap

    gc.collect()
    trim_heap()
    return take_baseline(proc_status, weight_file_rss_mib)


def test_the_runtime_residue_is_what_stays_once_the_model_is_gone() -> None:
    """A fake call leaves a runtime cache (kept after the model is deleted) beside the model's own
    memory: the residue is the cache, not the model, and the model's peak less it is the model."""
    import weakref

    from diffquant.bench.phases import runtime_residue

    _RUNTIME_CACHE.clear()
    base = _baseline_now()
    holder = [_Box(_touched(FAKE_MIB))]  # the model
    _RUNTIME_CACHE.append(_touched(RUNTIME_MIB))  # built by the first call, outlives the model
    peak_anon = _anon()
    alive = weakref.ref(holder[0])

    def drop() -> bool:
        holder.clear()
        return alive() is None

    residue = runtime_residue(drop, _anon, base)
    _RUNTIME_CACHE.clear()
    assert residue is not None and _near(residue, RUNTIME_MIB), residue
    out = base.model_peak_less_residue("gen", peak_anon, peak_anon, residue)
    assert _near(out["gen.model_peak_anon_mib"], FAKE_MIB), out
    assert _near(out["gen.peak_above_baseline_rss_mib"], FAKE_MIB + RUNTIME_MIB), out


class _Box:  # weakref-able stand-in for a pipeline object
    def __init__(self, content: Any) -> None:
        self.content = content


def test_a_model_that_survives_the_deletion_is_not_subtracted() -> None:
    """If the pipeline is still referenced after the deletion, its memory would pass for the
    runtime's: no residue is taken then (negative control of the one above)."""
    from diffquant.bench.phases import runtime_residue

    base = _baseline_now()
    model = _touched(FAKE_MIB)
    still_referenced = _Box(model)
    assert runtime_residue(lambda: False, _anon, base) is None
    out = base.model_peak_less_residue("gen", 400.0, 450.0, None)
    assert out["gen.model_peak_rss_mib"] == out["gen.peak_above_baseline_rss_mib"] == 450.0 - base.rss_anon_mib - base.weight_files_mib
    del still_referenced, model


def test_residue_arithmetic() -> None:
    base = Baseline(rss_mib=500.0, rss_anon_mib=300.0, rss_file_mib=200.0, weight_files_mib=10.0)
    out = base.model_peak_less_residue("gen", 420.0, 480.0, 20.0)
    assert out == {"gen.model_peak_anon_mib": 100.0, "gen.model_peak_rss_mib": 150.0,
                   "gen.peak_above_baseline_rss_mib": 170.0}
    # a residue below zero (the heap shrank under the baseline) subtracts nothing
    assert base.model_peak_less_residue("gen", 420.0, 480.0, -3.0)["gen.model_peak_rss_mib"] == 170.0


def test_the_gguf_kernels_scratch_counts_as_the_models_not_the_runtimes() -> None:
    """The CPU kernel's shared scratch holds a dequantized layer: it must be freed before the
    residue is read, so it stays in the model's peak (without that it would pass for runtime)."""
    import torch

    from diffquant.bench.phases import runtime_residue
    from diffquant.lowbit import linear

    base = _baseline_now()
    linear._scratch.buffers = {torch.bfloat16: torch.ones(FAKE_MIB * 2**19, dtype=torch.bfloat16)}  # FAKE_MIB
    holder = [_Box(None)]

    def drop() -> bool:
        holder.clear()
        return True

    residue = runtime_residue(drop, _anon, base)
    assert getattr(linear._scratch, "buffers", {}) == {}
    assert residue is not None and residue < FAKE_MIB / 2, residue
