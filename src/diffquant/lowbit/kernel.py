"""Build (once) and load the C++ dequantization kernel; call it.

Why a C++ extension: one pass over the blocks that writes each bf16 value once, vectorised by
the compiler for AVX2/AVX-512 and threaded with at::parallel_for, runs at several GB/s; the same
arithmetic as a chain of torch ops (diffusers' GGUF path, or inductor's fusion of it) runs at
~0.7 GB/s (docs/cpu-lowbit.md). Why built on first use, not at install: diffquant installs as pure
Python; the build needs only g++ and torch's headers, takes ~1 min once, and is cached in the
diffquant cache keyed by the source and torch version. A file lock serialises concurrent builds
(benchmark workers start in parallel). The kernel is compiled per instruction set inside one
module and picked by cpuid at run time, so the build flags stay portable (no -march=native).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from diffquant.errors import DiffquantError

_HERE = Path(__file__).resolve().parent
_SOURCES = ("dequant.cpp", "dequant_body.h")
# ggml type ids (gguf.GGMLQuantizationType) the kernel dequantizes.
SUPPORTED_QTYPES: dict[str, int] = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q2_K": 10,
                                    "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}
VARIANTS = {"generic": 0, "avx2": 1, "avx512": 2, "avx512bf16": 3}

_lock = threading.Lock()
_ops: Any = None


def build_dir() -> Path:
    """Where the compiled module lives: <diffquant cache>/kernels/lowbit-<hash of source+torch>."""
    import torch

    from diffquant.zoo import cache_root

    digest = hashlib.sha256()
    for name in _SOURCES:
        digest.update((_HERE / name).read_bytes())
    digest.update(torch.__version__.encode())
    return cache_root().parent / "kernels" / f"lowbit-{digest.hexdigest()[:16]}"


def ops() -> Any:
    """torch.ops.diffquant_lowbit, building the extension on first use in this cache."""
    global _ops
    if _ops is not None:
        return _ops
    with _lock:
        if _ops is None:
            _ops = _load()
    return _ops


def _load() -> Any:
    import fcntl

    import torch

    if hasattr(torch.ops, "diffquant_lowbit") and hasattr(torch.ops.diffquant_lowbit, "dequantize_into"):
        return torch.ops.diffquant_lowbit
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise DiffquantError(
            f"The CPU low-bit kernel is compiled on first use, and no C++ compiler ({compiler!r}) was found.",
            hint="install g++ (e.g. apt-get install g++), or set CXX; or use the plain gguf-* recipe")
    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    # torch's own FileBaton also guards the build, but it leaves a stale lock if a build is killed;
    # an fcntl lock dies with its process.
    with open(out / ".diffquant.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            _build(out)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return torch.ops.diffquant_lowbit


def _build(out: Path) -> None:
    from torch.utils import cpp_extension

    try:
        cpp_extension.load(
            name="diffquant_lowbit", sources=[str(_HERE / "dequant.cpp")], build_directory=str(out),
            extra_include_paths=[str(_HERE)],
            # -ffp-contract=off: no fused multiply-add, so values equal numpy's two roundings.
            # -fopenmp: at::parallel_for is inline OpenMP code; torch's libgomp is already loaded.
            extra_cflags=["-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            is_python_module=False, verbose=bool(os.environ.get("DIFFQUANT_VERBOSE_BUILD")))
    except (RuntimeError, OSError, ImportError) as err:  # compiler errors surface as RuntimeError
        raise DiffquantError(
            f"Building the CPU low-bit kernel failed in {out}: {str(err).splitlines()[-1] if str(err) else err}",
            hint="set DIFFQUANT_VERBOSE_BUILD=1 to see the compiler output; check that g++ and the "
                 "Python headers are installed; or use the plain gguf-* recipe") from err


def dequantize_into(blocks: Any, qtype: int, out: Any, variant: int = -1) -> Any:
    """Dequantize ``blocks`` (uint8, whole blocks of ggml type ``qtype``) into ``out`` (float32 or
    bfloat16, at least as many values), threaded; -1 picks the best kernel for this CPU."""
    return ops().dequantize_into(blocks, qtype, out, variant)


def gemv_into(blocks: Any, qtype: int, x: Any, y: Any, bf16_weight: bool, variant: int = -1) -> Any:
    """``y`` (M x N float32) = ``x`` (M x K float32, M <= 8) times the blocks as an N x K weight,
    transposed; the weight bf16-rounded when ``bf16_weight``. No weight buffer is written."""
    return ops().gemv_into(blocks, qtype, x, y, bf16_weight, variant)


def variant_supported(name: str) -> bool:
    return bool(ops().variant_supported(VARIANTS[name]))
