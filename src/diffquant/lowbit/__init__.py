"""A CPU execution path for GGUF block formats: weights stay in their blocks, each linear layer
dequantizes just in time into one reused bf16 buffer with a compiled, threaded kernel, then runs
torch's bf16 GEMM (AMX / AVX-512-BF16 where present). See docs/cpu-lowbit.md.

Used through the gguf recipes' ``cpu_kernel`` option: ``gguf-q4_k(cpu_kernel)``.
"""

from __future__ import annotations

import os
import shutil

# GGUF types the kernel dequantizes (recipe spelling); kept here so that checks import no torch.
KERNEL_TYPES = ("q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "q6_k", "q5_k", "q4_k", "q3_k", "q2_k")


def why_not_here(qtype: str, device: str) -> str | None:
    """None if the CPU kernel can run ``gguf-<qtype>`` on ``device``; otherwise why, and what to run."""
    if device != "cpu":
        return (f"cpu_kernel is diffquant's CPU path; on {device} diffusers' own GGUF kernels run. "
                f"Nearest that runs here: gguf-{qtype} (without cpu_kernel).")
    if qtype not in KERNEL_TYPES:
        return (f"cpu_kernel dequantizes quantized GGUF blocks; gguf-{qtype} has none. "
                f"Types it runs: {', '.join(KERNEL_TYPES)}.")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return (f"cpu_kernel compiles its kernel on first use and no C++ compiler ({compiler!r}) is on PATH; "
                f"install g++ or set CXX. Nearest that runs here: gguf-{qtype}.")
    return None
