"""Let a quantized component drop the bf16 weight file it was read from.

diffusers and transformers load safetensors through one private memory map per file; every tensor
loaded from it is a view of that map. Quantizing on load replaces the big weights, but the few
tensors a backend keeps as they are (biases, norms, embeddings, layers in ``skip=``) are still
views, so the whole map stays alive - and with it every page the quantizer read: measured on
zoo:flux-dev-slice, 1.3 GiB of the transformer's bf16 file stays resident beside its 0.36 GiB
NF4 copy (CPU-FACTS.md). Copying those few tensors into memory of their own (their size is part of
the component's weight bytes anyway) lets the map go: the file's pages leave the process, and the
kernel may keep them only as reclaimable page cache.

Quantizing also leaves freed bf16 temporaries in glibc's heap, which glibc keeps for reuse
rather than return (measured: 92 MiB for bnb-nf4 on the slice); :func:`trim_heap` hands them back.

Linux only (``/proc/self/maps``, glibc's ``malloc_trim``); elsewhere nothing is done.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class Released:
    tensors: int  # tensors copied out of a file mapping
    nbytes: int  # their bytes, now anonymous memory


def file_ranges(suffixes: tuple[str, ...] = WEIGHT_SUFFIXES) -> list[tuple[int, int, str]]:
    """(start, end, path) of every mapping of a weight file in this process, sorted."""
    ranges = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].strip().endswith(suffixes):
                    start, end = (int(x, 16) for x in parts[0].split("-"))
                    ranges.append((start, end, parts[5].strip()))
    except OSError:
        return []
    return sorted(ranges)


def _inside(ranges: list[tuple[int, int, str]], starts: list[int], address: int) -> bool:
    i = bisect.bisect_right(starts, address) - 1
    return i >= 0 and ranges[i][0] <= address < ranges[i][1]


def is_mapped(ranges: list[tuple[int, int, str]], t: Any) -> bool:
    """Whether CPU tensor ``t``'s storage lies in one of ``ranges`` (from :func:`file_ranges`)."""
    import torch

    if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or t.numel() == 0 or not ranges:
        return False
    return _inside(ranges, [r[0] for r in ranges], t.untyped_storage().data_ptr())


def _is_plain(t: Any) -> bool:
    import torch

    return type(t) in (torch.Tensor, torch.nn.Parameter)


def release_weight_files(module: Any) -> Released:
    """Copy every plain parameter and buffer of ``module`` that is a view of a mapped weight file
    into its own memory, so the file's mapping can be freed once nothing else holds it. Tensors of
    quantized types are the quantizers' own allocations and are left alone."""
    import gc

    import torch

    ranges = file_ranges()
    if not ranges:
        return Released(0, 0)
    starts = [r[0] for r in ranges]
    copies: dict[int, Any] = {}
    count = nbytes = 0
    with torch.no_grad():
        for sub in module.modules():
            for store in (sub._parameters, sub._buffers):
                for name, t in list(store.items()):
                    if t is None or not _is_plain(t) or t.device.type != "cpu" or t.numel() == 0:
                        continue
                    if not _inside(ranges, starts, t.untyped_storage().data_ptr()):
                        continue
                    key = id(t)
                    if key not in copies:  # a tied tensor is copied once and stays tied
                        if isinstance(t, torch.nn.Parameter):
                            t.data = t.data.clone()  # the same Parameter object: ties hold
                            copies[key] = t
                        else:
                            copies[key] = t.clone()
                        count += 1
                        nbytes += t.numel() * t.element_size()
                    store[name] = copies[key]
    gc.collect()
    return Released(count, nbytes)


def _glibc_call(name: str, *args: int) -> bool:
    """``libc.name(*args)`` where this process runs on glibc; its result as a bool, False elsewhere."""
    import ctypes
    import ctypes.util

    if not on_glibc():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(getattr(libc, name)(*args))
    except (OSError, AttributeError):
        return False


def trim_heap() -> bool:
    """Return freed heap memory to the system (glibc ``malloc_trim(0)``); False where unavailable."""
    return _glibc_call("malloc_trim", 0)


MMAP_THRESHOLD = 1 << 20  # glibc's M_MMAP_THRESHOLD set by fix_mmap_threshold
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


@functools.cache
def on_glibc() -> bool:
    """Whether this process runs on glibc, whose ``malloc_trim`` and ``mallopt(M_MMAP_THRESHOLD)``
    ``trim_heap`` and ``fix_mmap_threshold`` use (musl, macOS and Windows have no such knobs)."""
    import platform

    return platform.libc_ver()[0] == "glibc"


def fix_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold at ``nbytes`` (``mallopt(M_MMAP_THRESHOLD)``, what the
    ``MALLOC_MMAP_THRESHOLD_`` environment variable does at start-up); False where unavailable.

    By default the threshold slides: once a block of up to 32 MiB that came from ``mmap`` is freed,
    later blocks up to that size come from the heap. A backend that re-allocates every weight on
    every call (FP8 layerwise casting: a bf16 copy before each layer, a new float8 copy after it)
    then leaves the freed copies scattered through the heap, where glibc keeps them resident:
    measured on zoo:flux-dev-slice, anonymous memory grew by the size of the float8 weights in the
    first call. With the threshold pinned, every weight-sized block is its own mapping and is
    returned to the system when freed. Process-wide; smaller allocations are unaffected.
    """
    return _glibc_call("mallopt", _M_MMAP_THRESHOLD, int(nbytes))


def in_own_arena(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a short-lived thread, so that its allocations come from that
    thread's glibc malloc arena. Quantizing on load frees bf16 temporaries between the quantized
    tensors it keeps, leaving holes in the heap; later calls' temporaries land in those holes and
    glibc keeps them resident after freeing them (measured on zoo:flux-dev-slice with quanto-int4:
    ~430 MiB resident but free after one call, growing with each call). In the loader's own arena,
    the holes stay out of the main thread's way, trimmed and never touched again. Torch's grad
    mode (thread-local) is carried over; an exception is re-raised here."""
    import threading

    import torch

    grad = torch.is_grad_enabled()
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            with torch.set_grad_enabled(grad):
                out["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            out["error"] = exc

    thread = threading.Thread(target=run, name="diffquant-load", daemon=True)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]
