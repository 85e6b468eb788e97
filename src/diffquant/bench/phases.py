"""The worker's measurement phases, each a small tracker around plain calls (optimum-benchmark's
shape): a *baseline* after every library is imported, the *load*, and the *calls* (first call
apart, then steady calls until there are enough for a confidence interval).

The model's own memory is the process's memory minus the baseline, which is taken after torch,
diffusers, transformers, the pipeline's and components' classes and every package the recipe's
backends use have been imported (and torch has run one tiny op), and before any weight is read:

- ``baseline.rss_mib`` / ``baseline.rss_anon_mib`` / ``baseline.rss_weight_files_mib``: the
  process at that moment;
- ``load.model_anon_mib``: anonymous RSS after loading minus the baseline's (tensors the process
  allocated: quantized weights, copies);
- ``load.model_rss_mib``: that plus the resident pages of mapped weight files (bf16 safetensors
  read lazily, GGUF files) - the model's whole resident memory. Pages of shared libraries that the
  first calls touch (kernels' code, ~20-50 MiB) are the libraries', so they are left out;
- ``load.model_peak_*``: the same at the load phase's sampled peak;
- ``gen.model_peak_*``: the same at the generation phase's sampled peak, less the *runtime
  residue* (``gen.runtime_residue_mib``): what the process still holds above the baseline once the
  pipeline has been deleted, dynamo's compiled graphs dropped and the heap trimmed after the last
  call. Measured on zoo:shapes it is ~20 MiB for every recipe: oneDNN's primitive cache
  (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``, ~9 MiB) and ideep's LRU cache of matmul/conv primitives
  (``LRU_CACHE_CAPACITY``, ~7 MiB), both keyed by op shape and built by the first call, plus modules
  imported lazily. It outlives the model, so it is the runtime's, not the model's; the figure before
  the subtraction stays as ``gen.peak_above_baseline_rss_mib``. If the pipeline is still referenced
  after the deletion (nothing can be told apart), nothing is subtracted
  (``gen.runtime_residue_mib`` is None).

Host contention: the sampler reads the 1-minute load average all through the run; the run is
``host.contended`` when the highest value, minus the run's own compute threads, exceeds the cores
those threads leave free by more than :data:`CONTENDED_MARGIN` (other processes wanted more CPU
than there was).
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Load above "free cores" tolerated before a run counts as contended: kernel threads and our own
# sampler keep an idle machine's load average a little above the compute threads' count.
CONTENDED_MARGIN = 0.5


@dataclass(frozen=True)
class Baseline:
    """The process's memory once everything is imported and before any weight is read (MiB)."""

    rss_mib: float
    rss_anon_mib: float
    rss_file_mib: float
    weight_files_mib: float = 0.0

    def counters(self) -> dict[str, float]:
        return {"baseline.rss_mib": self.rss_mib, "baseline.rss_anon_mib": self.rss_anon_mib,
                "baseline.rss_file_mib": self.rss_file_mib, "baseline.rss_weight_files_mib": self.weight_files_mib}

    def model(self, prefix: str, anon_mib: float | None, anon_plus_files_mib: float | None, *,
              peak: bool = False) -> dict[str, float | None]:
        """``<prefix>.model_[peak_]anon_mib`` (anonymous RSS minus the baseline's) and
        ``<prefix>.model_[peak_]rss_mib`` (anonymous + weight-file pages, minus the baseline's)."""
        kind = "peak_" if peak else ""
        base_both = self.rss_anon_mib + self.weight_files_mib
        return {f"{prefix}.model_{kind}anon_mib": None if anon_mib is None else anon_mib - self.rss_anon_mib,
                f"{prefix}.model_{kind}rss_mib": None if anon_plus_files_mib is None
                else anon_plus_files_mib - base_both}

    def model_peak_less_residue(self, prefix: str, anon_mib: float | None, anon_plus_files_mib: float | None,
                                residue_mib: float | None) -> dict[str, float | None]:
        """The phase's peaks above the baseline less the runtime residue (see the module's doc; none
        subtracted when it is None), and the peak above the baseline before it
        (``<prefix>.peak_above_baseline_rss_mib``)."""
        out = self.model(prefix, anon_mib, anon_plus_files_mib, peak=True)
        out[f"{prefix}.peak_above_baseline_rss_mib"] = out[f"{prefix}.model_peak_rss_mib"]
        less = max(residue_mib or 0.0, 0.0)
        return {k: v - less if v is not None and ".model_peak_" in k else v for k, v in out.items()}


def runtime_residue(drop: Callable[[], bool], anon_mib: Callable[[], float | None], baseline: Baseline
                    ) -> float | None:
    """Anonymous RSS above the baseline once ``drop()`` has deleted the model (it returns whether the
    model was really freed), torch's compiled graphs are dropped and the heap is trimmed; None when
    the model survived the deletion."""
    import gc
    import sys

    from diffquant.file_pages import trim_heap

    if not drop():
        return None
    if "torch._dynamo" in sys.modules:  # compiled graphs (and constants they hold) are the model's
        sys.modules["torch._dynamo"].reset()
    if "diffquant.lowbit.linear" in sys.modules:  # the GGUF kernel's scratch holds dequantized weights
        sys.modules["diffquant.lowbit.linear"].release_scratch()
    gc.collect()
    trim_heap()
    now = anon_mib()
    return None if now is None else now - baseline.rss_anon_mib


def import_for(recipe: Any, model_dir: Path) -> list[str]:
    """Import what loading ``recipe`` on ``model_dir`` will import, without reading a weight:
    the pipeline's and components' classes, every backend package of the recipe and the libraries'
    quantizer modules. Returns the modules imported (for the record)."""
    import diffusers
    import transformers

    from diffquant.components import pipeline_class_name, read_components
    from diffquant.recipes.catalog import BACKENDS

    done = ["torch", "diffusers", "transformers"]
    # imported by loading or by the first call whatever the recipe (measured: ~25 modules)
    for name in ("diffquant.pipeline", "diffusers.guiders"):
        importlib.import_module(name)
        done.append(name)
    getattr(diffusers, pipeline_class_name(model_dir), None)  # lazy modules import on attribute access
    for comp in read_components(model_dir).values():
        library = diffusers if comp.library == "diffusers" else transformers if comp.library == "transformers" else None
        if library is not None:
            getattr(library, comp.class_name, None)
    for spec in recipe.quant:
        for name in (BACKENDS[spec.backend].package, "diffusers.quantizers.auto", "transformers.quantizers.auto"):
            if name not in done:
                importlib.import_module(name)
                done.append(name)
    return done


def warm_runtime() -> None:
    """Run small ops of the kinds a diffusion pipeline runs (matmul on every thread, conv, attention,
    norms) per dtype, so torch's CPU runtime (thread pool, kernel caches) exists before the baseline:
    it belongs to the library, not to the model. Measured: ~4 MiB anonymous."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            a = torch.ones(256, 256, dtype=dtype)
            (a @ a).sum().item()
            image = torch.ones(1, 16, 32, 32, dtype=dtype)
            F.conv2d(image, torch.ones(16, 16, 3, 3, dtype=dtype), padding=1).sum().item()
            F.group_norm(image, 4).sum().item()
            q = torch.ones(1, 2, 64, 32, dtype=dtype)
            F.scaled_dot_product_attention(q, q, q).sum().item()
            F.gelu(F.layer_norm(q, (32,))).sum().item()


def take_baseline(status: Callable[[], dict[str, float]], weight_files: Callable[[], float | None]) -> Baseline:
    now = status()
    return Baseline(now.get("rss", 0.0), now.get("rss_anon", 0.0), now.get("rss_file", 0.0),
                    weight_files() or 0.0)


def contention_counters(load_max: float | None, own_threads: int, cores: int) -> dict[str, Any]:
    """``host.loadavg_1m.max``, ``host.load_others.max`` (the load minus the run's own threads),
    ``host.own_threads``, ``host.cores`` and ``host.contended`` (1/0; None without a load average)."""
    own = max(0, min(own_threads, cores))
    if load_max is None:
        return {"host.loadavg_1m.max": None, "host.load_others.max": None, "host.own_threads": own,
                "host.cores": cores, "host.contended": None}
    others = max(0.0, load_max - own)
    return {"host.loadavg_1m.max": load_max, "host.load_others.max": others, "host.own_threads": own,
            "host.cores": cores, "host.contended": int(others > cores - own + CONTENDED_MARGIN)}


def host_cores() -> int:
    return os.cpu_count() or 1


# -- page-in of mapped weights --------------------------------------------------------------------
def mapped_weight_files(suffixes: tuple[str, ...] | None = None) -> list[str]:
    """Paths of weight files this process has memory-mapped (``/proc/self/maps``; [] off Linux)."""
    from diffquant.bench.measure import WEIGHT_FILE_SUFFIXES

    suffixes = suffixes or WEIGHT_FILE_SUFFIXES
    paths: list[str] = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                parts = line.split(maxsplit=5)
                if len(parts) == 6:
                    path = parts[5].strip()
                    if path.endswith(suffixes) and path not in paths:
                        paths.append(path)
    except OSError:
        return []
    return paths


# The read buffer is anonymous memory of the worker's, taken inside the generation phase: it must
# stay small beside a model's activations. Measured: a 16 MiB buffer (bytearray zero-fills it, so
# every page is resident) showed up in zoo:shapes' bnb-nf4 generation peak whenever the sampler
# caught it (+7-16 MiB on a 10 MiB model figure); 256 KiB reads a file just as fast.
READ_CHUNK = 256 * 1024


def read_through(paths: list[str], chunk: int = READ_CHUNK) -> int:
    """Read files once into the page cache through one small reused buffer: the pages become
    cheap to map, and the process's RSS does not grow. Returns the bytes read."""
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    total = 0
    for path in paths:
        try:
            with open(path, "rb", buffering=0) as handle:
                while True:
                    n = handle.readinto(view)
                    if not n:
                        break
                    total += n
        except OSError:
            continue
    return total


def page_in_weights() -> dict[str, float | int]:
    """Before the first call: bring the mapped weight files into the page cache and time it as
    ``first_call.page_in_s``, so that disk reads of lazily mapped weights are not taken for
    compile time (the first call then only maps pages already in memory)."""
    started = time.perf_counter()
    paths = mapped_weight_files()
    nbytes = read_through(paths)
    return {"first_call.page_in_s": time.perf_counter() - started, "first_call.page_in_bytes": nbytes}


# -- steady calls ---------------------------------------------------------------------------------
MAX_STEADY_CALLS = 1000


def steady_plan(pairs: list[Any], repeats: int, min_time_s: float, elapsed: Callable[[], float]
                ) -> Iterator[tuple[Any, bool]]:
    """Steady calls: every (prompt, seed) pair after the first once (saved), then pair 0 again
    until there are at least ``repeats`` calls *and* ``min_time_s`` seconds of steady calls
    (count-based when ``min_time_s`` is 0), at most :data:`MAX_STEADY_CALLS`. Yields (pair, save)."""
    count = 0
    for pair in pairs[1:]:
        yield pair, True
        count += 1
    while count < MAX_STEADY_CALLS and (count < repeats or elapsed() < min_time_s):
        yield pairs[0], False
        count += 1
