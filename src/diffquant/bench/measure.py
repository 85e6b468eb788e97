"""Counters the worker reads, and a sampling thread for peaks. Each figure says what it counts.

CPU (Linux ``/proc/self/status``):

- ``rss``: VmRSS, every resident page of the process - anonymous memory *and* file-backed pages.
  Memory-mapped safetensors weights count only once they have been read, so a lazily loaded
  bf16 model looks small right after loading and grows during the first call.
- ``rss_anon``: RssAnon, anonymous memory only (heap, tensors the process allocated). Weights still
  backed by a mapped file are not in it.
- ``rss_file``: RssFile, resident file-backed pages (mapped weight files, shared libraries).
- ``vmhwm``: VmHWM, the kernel's own RSS high-water mark; reset between phases by writing ``5``
  to ``/proc/self/clear_refs`` (Linux >= 4.0), so a phase's peak is not its predecessor's.

The sampler thread also catches peaks of ``rss_anon`` (VmHWM only tracks plain RSS) and, on CUDA,
device-wide used memory through NVML. It sleeps on an ``Event`` between samples (no busy loop).

CUDA (torch): allocated / reserved now and their maxima since the last reset; device-wide used
memory from NVML (``pynvml``) when importable and from ``torch.cuda.mem_get_info`` always.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Self

MIB = 1024 * 1024
_STATUS_KEYS = {"VmRSS": "rss", "RssAnon": "rss_anon", "RssFile": "rss_file", "VmHWM": "vmhwm"}


def proc_status() -> dict[str, float]:
    """rss, rss_anon, rss_file, vmhwm of this process in MiB (empty off Linux)."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key in _STATUS_KEYS:
                    out[_STATUS_KEYS[key]] = int(value.split()[0]) / 1024.0  # kB -> MiB
    except OSError:
        import psutil

        info = psutil.Process().memory_info()
        out["rss"] = info.rss / MIB
    return out


WEIGHT_FILE_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt")


def weight_file_rss_by_path(suffixes: tuple[str, ...] = WEIGHT_FILE_SUFFIXES) -> dict[str, float] | None:
    """Resident pages of each memory-mapped weight file (from ``/proc/self/smaps``), MiB by path;
    None off Linux."""
    totals: dict[str, int] = {}
    current: str | None = None
    try:
        with open("/proc/self/smaps", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                first = line.split(maxsplit=1)[0]
                if "-" in first and not first.endswith(":"):  # a mapping header: addr-addr perms ... path
                    parts = line.split(maxsplit=5)
                    path = parts[5].strip() if len(parts) == 6 else ""
                    current = path if path.endswith(suffixes) else None
                elif current is not None and first == "Rss:":
                    totals[current] = totals.get(current, 0) + int(line.split()[1])
    except OSError:
        return None
    return {path: kb / 1024.0 for path, kb in totals.items()}


def weight_file_rss_mib(suffixes: tuple[str, ...] = WEIGHT_FILE_SUFFIXES) -> float | None:
    """Resident pages of memory-mapped weight files (from ``/proc/self/smaps``), in MiB.

    Splits plain RSS into "weights still mapped from files" and the rest: a bf16 model's weights
    live here, and so would the bf16 file a quantize-on-load recipe read, as long as any tensor
    still referenced the mapping. None off Linux."""
    by_path = weight_file_rss_by_path(suffixes)
    return None if by_path is None else sum(by_path.values())


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


# -- CUDA ---------------------------------------------------------------------------------------
class Nvml:
    """Device-wide used memory of the GPU torch uses, via NVML; ``used_mib()`` is None without it."""

    def __init__(self, device_index: int = 0) -> None:
        self.handle: Any = None
        self.error: str | None = None
        try:
            import pynvml  # type: ignore[import-not-found]

            pynvml.nvmlInit()
            self._nvml = pynvml
            self.handle = self._handle(pynvml, device_index)
        except Exception as exc:  # noqa: BLE001 - NVML is optional; say why it is absent
            self.error = f"{type(exc).__name__}: {exc}"

    @staticmethod
    def _handle(pynvml: Any, device_index: int) -> Any:
        import torch

        props = torch.cuda.get_device_properties(device_index)
        bus = getattr(props, "pci_bus_id", None)
        if bus is not None:  # match by PCI address: right even under CUDA_VISIBLE_DEVICES
            domain, device = getattr(props, "pci_domain_id", 0), getattr(props, "pci_device_id", 0)
            with contextlib.suppress(Exception):  # fall back to the index
                return pynvml.nvmlDeviceGetHandleByPciBusId(f"{domain:08x}:{bus:02x}:{device:02x}.0")
        return pynvml.nvmlDeviceGetHandleByIndex(device_index)

    def used_mib(self) -> float | None:
        if self.handle is None:
            return None
        try:
            return self._nvml.nvmlDeviceGetMemoryInfo(self.handle).used / MIB
        except Exception:  # noqa: BLE001
            return None


def cuda_counters(prefix: str, *, nvml: Nvml | None = None) -> dict[str, float | None]:
    """``<prefix>.cuda_*_mib`` and device-wide used memory, read now (after a synchronize)."""
    import torch

    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    out: dict[str, float | None] = {
        f"{prefix}.cuda_allocated_mib": torch.cuda.memory_allocated() / MIB,
        f"{prefix}.cuda_reserved_mib": torch.cuda.memory_reserved() / MIB,
        f"{prefix}.cuda_max_allocated_mib": torch.cuda.max_memory_allocated() / MIB,
        f"{prefix}.cuda_max_reserved_mib": torch.cuda.max_memory_reserved() / MIB,
        f"{prefix}.gpu_used_mib.meminfo": (total - free) / MIB,
    }
    if nvml is not None:
        out[f"{prefix}.gpu_used_mib.nvml"] = nvml.used_mib()
    return out


def reset_cuda_peaks() -> None:
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()


# -- sampling thread ----------------------------------------------------------------------------
@dataclass
class PhasePeaks:
    rss_mib: float = 0.0
    rss_anon_mib: float = 0.0
    gpu_used_mib: float | None = None
    loadavg_1m: float | None = None  # the host's highest 1-minute load average seen in the phase
    anon_plus_files_mib: float | None = None  # anonymous RSS + resident weight-file pages, at their peak
    samples: int = 0


@dataclass
class Sampler:
    """Samples RSS, anonymous RSS and (optionally) device-used memory every ``interval_s`` seconds,
    keeping the maximum per named phase. Use as a context manager; switch with :meth:`phase`."""

    interval_s: float = 0.02
    gpu_used: Callable[[], float | None] | None = None
    # resident weight-file pages (smaps: 10-40 ms to read, so every ``files_every`` samples only;
    # the latest reading is added to every anonymous-RSS sample in between)
    weight_files: Callable[[], float | None] | None = None
    files_every: int = 50
    peaks: dict[str, PhasePeaks] = field(default_factory=dict)
    _files_mib: float | None = None
    _count: int = 0
    _current: str = "start"
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="diffquant-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    def phase(self, name: str) -> None:
        """Start a new phase: take one sample closing the old one, then count peaks under ``name``."""
        self._sample(files=True)
        with self._lock:
            self._current = name
        self._sample(files=True)

    def peak(self, name: str) -> PhasePeaks:
        self._sample(files=True)
        with self._lock:
            return self.peaks.get(name, PhasePeaks())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self, files: bool = False) -> None:
        status = proc_status()
        gpu = self.gpu_used() if self.gpu_used is not None else None
        load = loadavg_1m()
        self._count += 1
        if self.weight_files is not None and (files or self._files_mib is None or self._count % self.files_every == 0):
            self._files_mib = self.weight_files()
        with self._lock:
            peaks = self.peaks.setdefault(self._current, PhasePeaks())
            peaks.rss_mib = max(peaks.rss_mib, status.get("rss", 0.0))
            peaks.rss_anon_mib = max(peaks.rss_anon_mib, status.get("rss_anon", 0.0))
            if gpu is not None:
                peaks.gpu_used_mib = gpu if peaks.gpu_used_mib is None else max(peaks.gpu_used_mib, gpu)
            if load is not None:
                peaks.loadavg_1m = load if peaks.loadavg_1m is None else max(peaks.loadavg_1m, load)
            if self._files_mib is not None and "rss_anon" in status:
                both = status["rss_anon"] + self._files_mib
                peaks.anon_plus_files_mib = both if peaks.anon_plus_files_mib is None else max(
                    peaks.anon_plus_files_mib, both)
            peaks.samples += 1


def loadavg_1m() -> float | None:
    """The host's 1-minute load average: how contended the CPU was (other processes included)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def minor_page_faults() -> int | None:
    """Minor page faults of this process so far (``getrusage``): pages the kernel mapped without
    reading the disk — fresh zeroed pages, or pages of a mapped file already in memory. Far more per
    call than the reference recipe's means memory is handed back to the OS and taken again on every
    call, which costs time the model's arithmetic does not explain."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# -- statistics and timing ----------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (pos - low))


def latency_stats(prefix: str, values: Sequence[float], *, keep_samples: bool = False
                  ) -> dict[str, Any]:
    """``<prefix>.p50``, ``.p25``/``.p75`` (the interquartile range), ``.p90``, ``.mean``, ``.min``,
    ``.max``, ``<prefix>.n`` and, with ``keep_samples``, every value as ``<prefix>.samples`` (the
    results table bootstraps its latency ratios from them)."""
    out: dict[str, Any] = {
        f"{prefix}.p50": percentile(values, 50), f"{prefix}.p25": percentile(values, 25),
        f"{prefix}.p75": percentile(values, 75), f"{prefix}.p90": percentile(values, 90),
        f"{prefix}.mean": statistics.fmean(values) if values else None,
        f"{prefix}.min": min(values) if values else None, f"{prefix}.max": max(values) if values else None,
        f"{prefix}.n": len(values)}
    if keep_samples:
        out[f"{prefix}.samples"] = [round(float(v), 6) for v in values]
    return out


class StepClock:
    """Step callback that timestamps the end of every denoising step (synchronizing CUDA first, so
    a timestamp means the step's kernels have finished)."""

    def __init__(self, sync: Callable[[], None] | None = None,
                 on_step: Callable[[int], None] | None = None) -> None:
        self.sync = sync
        self.on_step = on_step
        self.call_start = 0.0
        self.stamps: list[float] = []

    def start_call(self) -> None:
        if self.sync is not None:
            self.sync()
        self.stamps = []
        self.call_start = time.perf_counter()

    def __call__(self, step: int) -> None:
        if self.sync is not None:
            self.sync()
        self.stamps.append(time.perf_counter())
        if self.on_step is not None:
            self.on_step(step)

    def step_intervals(self) -> list[float]:
        """Durations of steps 2..N of the call (step 1 also holds the text encoders' work)."""
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]

    def first_step_s(self) -> float | None:
        return self.stamps[0] - self.call_start if self.stamps else None
