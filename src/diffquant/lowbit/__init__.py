"""A CPU execution path for GGUF block formats: weights stay in their blocks, each linear layer
dequantizes just in time into one reused bf16 buffer with a compiled, threaded kernel, then runs
torch's bf16 GEMM (AMX / AVX-512-BF16 where present). See docs/cpu-lowbit.md.

The kernel behind the gguf recipes on CPU: a recipe that leaves ``cpu_kernel`` out runs it where
it can (``on_by_default``); ``gguf-q4_k(cpu_kernel)`` insists on it (refused where it cannot run);
``gguf-q4_k(cpu_kernel=false)`` keeps diffusers' own dequantization.
"""

from __future__ import annotations

import logging
import os
import shutil

# GGUF types the kernel dequantizes (recipe spelling); kept here so that checks import no torch.
KERNEL_TYPES = ("q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "q6_k", "q5_k", "q4_k", "q3_k", "q2_k")
_MIX_SUFFIXES = ("_s", "_m", "_l")  # named mixes (q4_k_m, ...): K-quant blocks of kernel types

_log = logging.getLogger(__name__)


def _base(qtype: str) -> str:
    """The base type of a named mix (q4_k_m -> q4_k); other types unchanged."""
    return qtype[:-2] if qtype.endswith(_MIX_SUFFIXES) else qtype


def why_not_here(qtype: str, device: str) -> str | None:
    """None if the CPU kernel can run ``gguf-<qtype>`` on ``device``; otherwise why, and what to run."""
    if device != "cpu":
        return (f"cpu_kernel is diffquant's CPU path; on {device} diffusers' own GGUF kernels run. "
                f"Nearest that runs here: gguf-{qtype} (without cpu_kernel).")
    if _base(qtype) not in KERNEL_TYPES:
        return (f"cpu_kernel dequantizes quantized GGUF blocks; gguf-{qtype} has none. "
                f"Types it runs: {', '.join(KERNEL_TYPES)}.")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return (f"cpu_kernel compiles its kernel on first use and no C++ compiler ({compiler!r}) is on PATH; "
                f"install g++ or set CXX. Nearest that runs here: gguf-{qtype}.")
    return None


def on_by_default(qtype: str, device: str) -> bool:
    """Whether ``gguf-<qtype>`` without a ``cpu_kernel`` option runs the kernel on ``device``: on the
    CPU, for every type with quantized blocks (named mixes too), when a C++ compiler is there to
    build it. It is faster there than diffusers' dequantization at every FLUX layer shape and in
    the whole pipeline (docs/cpu-lowbit.md, measured idle); without a compiler the recipe still
    runs, through diffusers' path (logged), since the user did not ask for the kernel."""
    if device != "cpu" or _base(qtype) not in KERNEL_TYPES:
        return False
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        _log.warning("gguf-%s on CPU: no C++ compiler (%r) to build diffquant's kernel; using diffusers' "
                     "slower GGUF dequantization (install g++, or write cpu_kernel=false to silence this)",
                     qtype, compiler)
        return False
    return True
