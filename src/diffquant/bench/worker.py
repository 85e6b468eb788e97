"""One benchmark run in its own interpreter: ``python -m diffquant.bench.worker SPEC.json``.

The worker loads the pipeline with the recipe, makes every (prompt, seed) image, measures, and
writes a result JSON (atomically) to ``spec.result_path``. It reports progress as JSON lines on
the file descriptor named by ``$DIFFQUANT_EVENT_FD`` (if set). The parent trusts none of this for
the run's fate: it reads the exit status itself, and a worker that dies leaves no result.

Calls, in order: the *first call* (prompt 0, seed 0: warm-up, and compilation if the recipe
compiles; mapped weight files are read into the page cache just before it, timed apart, so that
disk reads are not taken for compile time), ``warmup`` untimed repeats of it, then the *steady
calls*: every other (prompt, seed) pair, plus repeats of pair 0 until there are at least
``repeats`` of them and they have run for ``min_time_s`` (see :mod:`diffquant.bench.phases`).
Every pair's image is saved once (PNG + final latents).
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffquant.atomic import atomic_path, write_json_atomic
from diffquant.bench.spec import RunSpec
from diffquant.errors import DiffquantError

MIB = 1024 * 1024


class Events:
    """Progress events to the parent, one JSON object per line; silent if no channel was given."""

    def __init__(self) -> None:
        fd = os.environ.get("DIFFQUANT_EVENT_FD")
        self.fd = int(fd) if fd and fd.isdigit() else None
        if self.fd is not None:
            try:
                os.set_inheritable(self.fd, False)  # grandchildren must not hold the parent's pipe open
            except OSError:
                self.fd = None

    def send(self, event: str, **data: Any) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, (json.dumps({"event": event, **data}) + "\n").encode())
        except OSError:  # the parent has gone: nobody is listening, carry on to our own end
            self.fd = None


def _die_with_parent() -> None:
    """Linux: get SIGKILL if the parent dies, so an orphaned worker never runs on."""
    import contextlib
    import ctypes

    with contextlib.suppress(Exception):  # best effort off Linux
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent is already gone
        os._exit(70)


def _fault(spec: RunSpec, phase: str) -> None:
    """Test-only fault injection: die or misbehave in the ways real runs do."""
    if not spec.fault or spec.fault_phase != phase:
        return
    sys.stderr.write(f"diffquant worker: injecting fault {spec.fault!r} at {phase}\n")
    sys.stderr.flush()
    if spec.fault == "abort":
        os.abort()
    if spec.fault == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if spec.fault == "segfault":
        import ctypes

        ctypes.string_at(0)
    if spec.fault == "hang":
        while True:
            time.sleep(3600)
    if spec.fault == "exit":
        os._exit(3)
    if spec.fault == "raise":
        raise RuntimeError("injected fault")
    raise ValueError(f"unknown fault {spec.fault!r}")


def save_image(output: Any, folder: Path, stem: str, meta: dict[str, str], with_latents: bool = True
               ) -> tuple[Path, Path | None]:
    """PNG with metadata, then the latents as safetensors; each written to a temp name and renamed."""
    from PIL.PngImagePlugin import PngInfo

    folder.mkdir(parents=True, exist_ok=True)
    png = folder / f"{stem}.png"
    info = PngInfo()
    for key, value in meta.items():
        info.add_text(key, value)
    with atomic_path(png, suffix=".png") as tmp:
        output.image.save(tmp, format="PNG", pnginfo=info)
    if not with_latents or output.latents is None:
        return png, None
    from safetensors.torch import save_file

    latents = folder / f"{stem}.latents.safetensors"
    with atomic_path(latents) as tmp:
        save_file({"latents": output.latents.contiguous()}, str(tmp), metadata=meta)
    return png, latents


@dataclass
class Context:
    """What the phases share: the spec, the recipe it carries, where results go, the measuring tools."""

    spec: RunSpec
    metrics: dict[str, Any]
    result: dict[str, Any]
    events: Events
    sampler: Any  # bench.measure.Sampler
    baseline: Any  # bench.phases.Baseline
    nvml: Any  # bench.measure.Nvml | None
    on_cuda: bool
    sync: Any  # torch.cuda.synchronize | None
    recipe: Any = None  # recipes.Recipe rebuilt from the spec's dict (received_recipe); None: rebuild it


def received_recipe(spec: RunSpec) -> Any:
    """The Recipe the parent sent, rebuilt from its dict form; its hash must be the one sent with it
    (a dict that does not round-trip is refused here, before anything is loaded)."""
    from diffquant.recipes import load_recipe
    from diffquant.recipes.model import Recipe

    if spec.recipe_dict is None:  # a spec written by hand: the string is all there is
        return load_recipe(spec.recipe)
    recipe = Recipe.from_dict(spec.recipe_dict)
    if spec.recipe_hash is not None and recipe.hash != spec.recipe_hash:
        raise DiffquantError(f"The recipe sent to this worker hashes to {recipe.hash}, not {spec.recipe_hash} "
                             f"({spec.recipe!r}): the parent and the worker disagree on the recipe format.",
                             hint="run the parent and the worker with the same diffquant version")
    return recipe


def measure_run(spec: RunSpec, metrics: dict[str, Any], result: dict[str, Any], events: Events) -> None:
    """Import, take the baseline, load, generate: each phase fills ``metrics`` and ``result`` as it
    goes (so a failure part-way still reports what was measured before it)."""
    events.send("phase", phase="import")
    recipe = received_recipe(spec)
    result["recipe"], result["recipe_hash"] = recipe.name, recipe.hash  # what this worker was given
    on_cuda, nvml = import_phase(spec, recipe, metrics, result)
    baseline = baseline_phase(metrics)
    import torch  # imported by now

    from diffquant.bench.measure import Sampler, weight_file_rss_mib
    from diffquant.bench.phases import contention_counters, host_cores

    own_threads = 1 if on_cuda else torch.get_num_threads()
    with Sampler(interval_s=spec.sample_interval_s, gpu_used=nvml.used_mib if nvml else None,
                 weight_files=weight_file_rss_mib) as sampler:
        ctx = Context(spec, metrics, result, events, sampler, baseline, nvml, on_cuda,
                      torch.cuda.synchronize if on_cuda else None, recipe)
        pipe = load_phase(ctx)
        generate_phase(ctx, pipe)
        metrics["host.loadavg_1m.end"] = _loadavg()
        if not on_cuda:  # what the runtime keeps once the model is gone is not the model's
            holder = [pipe]
            del pipe
            model_peaks_less_residue(ctx, holder)
    metrics["sampler.interval_s"] = spec.sample_interval_s
    metrics["sampler.samples"] = sum(p.samples for p in sampler.peaks.values())
    loads = [p.loadavg_1m for p in sampler.peaks.values() if p.loadavg_1m is not None]
    metrics.update(contention_counters(max(loads) if loads else None, own_threads, host_cores()))


def import_phase(spec: RunSpec, recipe: Any, metrics: dict[str, Any], result: dict[str, Any]) -> tuple[bool, Any]:
    """Import torch, diffusers and everything the recipe's backends use (the baseline must come
    after them); the device check; the environment. Returns (on CUDA, the NVML reader or None)."""
    started = time.perf_counter()
    import torch

    from diffquant.bench.env import capture_env
    from diffquant.bench.measure import Nvml
    from diffquant.bench.phases import import_for, warm_runtime
    from diffquant.components import resolve_model

    on_cuda = spec.device.startswith("cuda")
    if on_cuda and not torch.cuda.is_available():
        raise DiffquantError("This run asks for device 'cuda' but torch sees no CUDA device here.",
                             hint="run with --device cpu, or on a machine with a GPU")
    metrics["baseline.imports"] = ", ".join(import_for(recipe, resolve_model(spec.model)))
    warm_runtime()
    metrics["worker.import_s"] = time.perf_counter() - started
    device_index = (torch.device(spec.device).index if on_cuda else None)
    nvml = Nvml(torch.cuda.current_device() if device_index is None else device_index) if on_cuda else None
    result["env"] = env = capture_env(gpu=True)
    env["device"] = spec.device
    if nvml is not None and nvml.error:
        env["nvml"] = f"unavailable ({nvml.error})"
    return on_cuda, nvml


def baseline_phase(metrics: dict[str, Any]) -> Any:
    """The process's memory once everything is imported and before any weight is read
    (``bench.phases.Baseline``); what importing freed is handed back first."""
    from diffquant.bench.measure import proc_status, weight_file_rss_mib
    from diffquant.bench.phases import take_baseline
    from diffquant.file_pages import trim_heap

    gc.collect()
    trim_heap()  # what importing freed is not the baseline's
    baseline = take_baseline(proc_status, weight_file_rss_mib)
    metrics.update(baseline.counters())
    metrics["host.loadavg_1m.before_load"] = _loadavg()
    metrics["proc.rss_mib.before_load"] = baseline.rss_mib
    metrics["proc.rss_anon_mib.before_load"] = baseline.rss_anon_mib
    return baseline


def load_phase(ctx: Context) -> Any:
    """Load the pipeline with the recipe; memory now and at the phase's peak, whole-process and
    the model's own (minus the baseline); the weights actually held."""
    from diffquant.bench.measure import (
        cuda_counters,
        proc_status,
        reset_cuda_peaks,
        reset_peak_rss,
        weight_file_rss_mib,
    )
    from diffquant.inspect import component_stats, disk_bytes
    from diffquant.pipeline import load_info, load_pipeline

    spec, metrics = ctx.spec, ctx.metrics
    ctx.events.send("phase", phase="load")
    ctx.sampler.phase("load")
    metrics["load.vmhwm_reset"] = int(reset_peak_rss())
    if ctx.on_cuda:
        reset_cuda_peaks()
    _fault(spec, "load")
    t0 = time.perf_counter()
    quant_cache = Path(spec.quant_cache_dir) if spec.quant_cache_dir else None
    recipe = ctx.recipe if ctx.recipe is not None else received_recipe(spec)
    pipe = load_pipeline(spec.model, recipe, device=spec.device, quant_cache_dir=quant_cache)
    if ctx.sync:
        ctx.sync()
    metrics["load.wall_s"] = time.perf_counter() - t0
    gc.collect()
    status, peaks = proc_status(), ctx.sampler.peak("load")
    peak_rss = max(peaks.rss_mib, _hwm(status, metrics["load.vmhwm_reset"]))
    metrics.update({"load.rss_mib": status.get("rss"), "load.rss_anon_mib": status.get("rss_anon"),
                    "load.rss_file_mib": status.get("rss_file"), "load.vmhwm_mib": status.get("vmhwm"),
                    "load.rss_weight_files_mib": weight_file_rss_mib(),
                    "load.peak_rss_mib": peak_rss, "load.peak_rss_anon_mib": peaks.rss_anon_mib})
    files = metrics["load.rss_weight_files_mib"]
    metrics.update(ctx.baseline.model("load", status.get("rss_anon"), _plus(status.get("rss_anon"), files)))
    metrics.update(ctx.baseline.model("load", peaks.rss_anon_mib, peaks.anon_plus_files_mib, peak=True))
    if ctx.on_cuda:
        metrics.update(cuda_counters("load", nvml=ctx.nvml))
        metrics["load.peak_gpu_used_mib.nvml"] = peaks.gpu_used_mib
    info = load_info(pipe)
    metrics["load.quant_cache_used"] = int(bool(info.quant_cache_used))
    metrics["load.notes"] = "; ".join(info.notes) if info.notes else None
    metrics.update(info.counters)
    _component_metrics(component_stats(pipe), metrics)
    metrics.update(_files_per_component(Path(info.model_dir)))
    metrics["disk.model_bytes"] = disk_bytes(info.model_dir)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return pipe


def generate_phase(ctx: Context, pipe: Any) -> None:
    """The first call (compile, warm-up), ``warmup`` untimed repeats, then steady calls until there
    are enough (count- or time-based); latencies, the phase's peaks, images saved once per pair."""
    from diffquant.bench.measure import (
        StepClock,
        cuda_counters,
        latency_stats,
        minor_page_faults,
        percentile,
        proc_status,
        reset_cuda_peaks,
        reset_peak_rss,
        weight_file_rss_mib,
    )
    from diffquant.bench.phases import page_in_weights, steady_plan
    from diffquant.pipeline import default_settings, generate, load_info

    spec, metrics, result = ctx.spec, ctx.metrics, ctx.result
    recipe = load_info(pipe).recipe
    ctx.events.send("phase", phase="generate")
    ctx.sampler.phase("generate")
    metrics["gen.vmhwm_reset"] = int(reset_peak_rss())
    if ctx.on_cuda:
        reset_cuda_peaks()
    _fault(spec, "generate")
    pairs = [(pi, prompt, seed) for pi, prompt in enumerate(spec.prompts) for seed in spec.seeds]
    if not pairs:
        raise DiffquantError("A run needs at least one prompt and one seed.", hint="give --prompts and --seeds")
    model_kwargs = default_settings(spec.model).pipeline_kwargs  # generate() applies them
    clock = StepClock(sync=ctx.sync, on_step=lambda step: ctx.events.send("step", step=step + 1, steps=spec.steps))
    first_s, steady, steps, first_latents, repeat_diff = None, [], [], None, []
    faults: list[int] = []
    metrics.update(page_in_weights())  # disk reads of mapped weights are not compile time
    gen_started = time.perf_counter()
    steady_started: list[float] = []
    prelude = [("first", pairs[0], True)] + [("warmup", pairs[0], False)] * max(spec.warmup, 0)
    steady_calls = (("steady", pair, save) for pair, save in steady_plan(
        pairs, spec.repeats, spec.min_time_s,
        lambda: time.perf_counter() - steady_started[0] if steady_started else 0.0))
    planned = len(prelude) + max(len(pairs) - 1, spec.repeats)
    for index, (kind, pair, save) in enumerate(itertools.chain(prelude, steady_calls)):
        pi, prompt, seed = pair
        if kind == "steady" and not steady_started:
            steady_started.append(time.perf_counter())
        ctx.events.send("call", index=index + 1, total=max(planned, index + 1), kind=kind)
        faults_before = minor_page_faults()
        clock.start_call()
        output = generate(pipe, prompt, seed=seed, steps=spec.steps, height=spec.height, width=spec.width,
                          guidance_scale=spec.guidance_scale, step_callback=clock)
        if ctx.sync:
            ctx.sync()
        elapsed = time.perf_counter() - clock.call_start
        if kind == "first":
            first_s, first_latents = elapsed, output.latents
        elif kind == "steady":
            steady.append(elapsed)
            steps.extend(clock.step_intervals())
            if faults_before is not None and (faults_after := minor_page_faults()) is not None:
                faults.append(faults_after - faults_before)
            if pair == pairs[0] and first_latents is not None and output.latents is not None:
                repeat_diff.append(float((output.latents - first_latents).abs().max()))
        if save and spec.save_images:
            meta = {"prompt": prompt, "seed": str(seed), "recipe": recipe.name, "recipe_hash": recipe.hash,
                    "model": spec.model, "steps": str(spec.steps), "size": f"{spec.width}x{spec.height}",
                    "guidance_scale": str(spec.guidance_scale), "device": spec.device,
                    **{k: str(v) for k, v in model_kwargs.items()}}
            png, latents = save_image(output, Path(spec.image_dir), f"p{pi:03d}-s{seed}", meta)
            result["images"].append({"prompt": prompt, "prompt_index": pi, "seed": seed, "path": str(png),
                                     "latents_path": str(latents) if latents else None})
        del output
    metrics["gen.wall_s"] = time.perf_counter() - gen_started
    metrics["call.steady_rule"] = (f"at least {spec.repeats} calls and {spec.min_time_s:g} s" if spec.min_time_s
                                   else f"at least {spec.repeats} calls")
    status, peaks = proc_status(), ctx.sampler.peak("generate")
    metrics["first_call.latency_s"] = first_s
    metrics.update(latency_stats("call.latency_s", steady, keep_samples=True))
    metrics.update(latency_stats("step.latency_s", steps))
    if faults:  # per steady call; the denominator of "the allocator re-faults its pages every call"
        metrics["call.minor_faults.p50"] = percentile(faults, 50)
    metrics["compile.time_s"] = (first_s - metrics["call.latency_s.p50"]
                                 if recipe.compile.enabled and steady and first_s is not None else None)
    metrics["call.repeat_max_abs_diff"] = max(repeat_diff) if repeat_diff else None
    gen_hwm = _hwm(status, metrics["gen.vmhwm_reset"])
    peak_rss = max(peaks.rss_mib, gen_hwm)
    metrics.update({"gen.peak_rss_mib": peak_rss, "gen.peak_rss_anon_mib": peaks.rss_anon_mib,
                    "gen.vmhwm_mib": gen_hwm if metrics["gen.vmhwm_reset"] else None,
                    "gen.rss_mib": status.get("rss"), "gen.rss_anon_mib": status.get("rss_anon"),
                    "gen.rss_weight_files_mib": weight_file_rss_mib()})
    metrics.update(ctx.baseline.model("gen", peaks.rss_anon_mib, peaks.anon_plus_files_mib, peak=True))
    if ctx.on_cuda:
        metrics.update(cuda_counters("gen", nvml=ctx.nvml))
        metrics["gen.peak_gpu_used_mib.nvml"] = peaks.gpu_used_mib
    metrics["proc.vmhwm_mib"] = status.get("vmhwm")


def model_peaks_less_residue(ctx: Context, holder: list[Any]) -> None:
    """Delete the pipeline (the only reference is in ``holder``), measure the runtime residue and
    record the generation peaks of the model's own memory less it (:mod:`diffquant.bench.phases`)."""
    import weakref

    from diffquant.bench.measure import proc_status
    from diffquant.bench.phases import runtime_residue

    ctx.sampler.phase("teardown")
    alive = weakref.ref(holder[0])

    def drop() -> bool:
        holder.clear()
        gc.collect()
        return alive() is None

    residue = runtime_residue(drop, lambda: proc_status().get("rss_anon"), ctx.baseline)
    ctx.metrics["gen.runtime_residue_mib"] = residue
    peaks = ctx.sampler.peak("generate")
    ctx.metrics.update(ctx.baseline.model_peak_less_residue("gen", peaks.rss_anon_mib, peaks.anon_plus_files_mib,
                                                            residue))


def _loadavg() -> float | None:
    from diffquant.bench.measure import loadavg_1m

    return loadavg_1m()


def _files_per_component(model_dir: Path) -> dict[str, float]:
    """``load.rss_weight_files_mib.<component>`` (resident pages of the component's weight files in
    the model folder) and ``disk.<component>.weight_file_bytes`` (their size): a quantized
    component should keep next to none of its bf16 file resident."""
    from diffquant.bench.measure import WEIGHT_FILE_SUFFIXES, weight_file_rss_by_path

    out: dict[str, float] = {}
    resident = weight_file_rss_by_path() or {}
    root = model_dir.resolve()
    for sub in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        files = [f for f in sub.iterdir() if f.is_file() and f.name.endswith(WEIGHT_FILE_SUFFIXES)]
        if not files:
            continue
        out[f"disk.{sub.name}.weight_file_bytes"] = sum(f.stat().st_size for f in files)
        out[f"load.rss_weight_files_mib.{sub.name}"] = sum(resident.get(str(f), 0.0) for f in files)
    return out


def _plus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def _hwm(status: dict[str, float], was_reset: int) -> float:
    """VmHWM as this phase's peak, only if it was reset at the phase's start (else 0: unknown)."""
    return status.get("vmhwm", 0.0) if was_reset else 0.0


def _component_metrics(stats: dict[str, Any], metrics: dict[str, Any]) -> None:
    total_params = total_bytes = 0
    for name, st in sorted(stats.items()):
        metrics[f"weights.{name}.params"] = st.params
        metrics[f"weights.{name}.bytes"] = st.weight_bytes
        metrics[f"weights.{name}.bits_per_weight"] = st.bits_per_weight
        metrics[f"weights.{name}.quantized_tensors"] = st.quantized_tensors
        total_params += st.params
        total_bytes += st.weight_bytes
    metrics["weights.total_params"] = total_params
    metrics["weights.total_bytes"] = total_bytes
    metrics["weights.bits_per_weight"] = 8.0 * total_bytes / total_params if total_params else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m diffquant.bench.worker SPEC.json", file=sys.stderr)
        return 2
    started = time.perf_counter()
    _die_with_parent()
    spec = RunSpec.from_json(Path(argv[0]).read_text(encoding="utf-8"))
    events = Events()
    metrics: dict[str, Any] = {}
    result: dict[str, Any] = {"status": "error", "error": None, "error_kind": None, "metrics": metrics,
                              "env": None, "images": [], "recipe": spec.recipe, "recipe_hash": None}
    code = 1
    try:
        _fault(spec, "start")
        measure_run(spec, metrics, result, events)
        result["status"], code = "ok", 0
    except DiffquantError as exc:  # the user's input or environment: the message is for people
        result["error"], result["error_kind"] = str(exc), "user"
        print(f"error: {exc}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - a bug or a backend failure: keep the traceback
        result["error"], result["error_kind"] = f"{type(exc).__name__}: {exc}", "exception"
        result["traceback"] = traceback.format_exc()
        traceback.print_exc()
    metrics["worker.wall_s"] = time.perf_counter() - started
    events.send("phase", phase="done")
    write_json_atomic(Path(spec.result_path), result)
    sys.stdout.flush()
    sys.stderr.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
