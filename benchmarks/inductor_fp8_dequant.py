"""Why torchao-fp8wo under torch.compile peaked above bf16 on CPU, and diffquant's fix: a 4-layer
stack, compiled as the seed's recipe compiles (fullgraph, max-autotune), prints inductor's generated
wrapper.

Plain ``torch.compile(mode="max-autotune")``: one ``cpp_fused__to_copy_mul_t_0`` call, before the
first ``mm``, writes every layer's dequantized bf16 weight (``buf0``, ``buf2``, ...), so a compiled
transformer holds its whole bf16 copy beside the fp8 weights during a call. The cause is not fusion
(inductor's fusion log finds no candidates) nor freezing: the mode asks for CUDA graphs
(``triton.cudagraphs``), and on CPU that turns on graph-partition reordering
(``Scheduler.reorder_for_partition_with_simple_dependency``), which counts every CPU node as a
partition and moves each node without dependencies (each dequantization reads only graph inputs) to
the front, where the C++ backend emits the adjacent ones as one kernel.

``--fixed`` compiles with ``diffquant.memory.compile_kwargs`` (what diffquant's compile step passes
for weight-only-quantized modules on CPU: the mode's options with ``triton.cudagraphs=False``): each
dequantization is written just before its ``mm`` and its buffer reused by the next
(``buf2 = buf0; del buf0``). ``--set triton.reorder_for_reducing_graph_partitions=0`` does the same.
Seconds on a CPU; nothing is downloaded.

    python benchmarks/inductor_fp8_dequant.py [--layers 4] [--fixed] [--set OPTION=INT ...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

CHILD = r"""
import sys, torch
import torch._inductor.config as ic
layers, fixed, settings = int(sys.argv[1]), sys.argv[2] == "fixed", sys.argv[3:]
for item in settings:
    key, value = item.split("=", 1)
    *path, attr = key.split(".")
    target = ic
    for part in path:
        target = getattr(target, part)
    setattr(target, attr, type(getattr(target, attr))(int(value)))
from torchao.quantization import Float8WeightOnlyConfig, quantize_
from diffquant.memory import compile_kwargs
m = torch.nn.Sequential(*[torch.nn.Linear(512, 512, bias=False) for _ in range(layers)]).to(torch.bfloat16)
quantize_(m, Float8WeightOnlyConfig())
kwargs = compile_kwargs(m, "max-autotune", True) if fixed else {"fullgraph": True, "mode": "max-autotune"}
print("torch.compile kwargs:", kwargs)
with torch.no_grad():
    torch.compile(m, **kwargs)(torch.randn(8, 512, dtype=torch.bfloat16))
"""


def written_before_first_mm(wrapper: list[str]) -> int:
    """How many buffers the kernels before the first ``mm`` write: dequantized weights alive at once
    when the first matmul runs (1 when each is written just before its own matmul)."""
    count = 0
    for line in wrapper:
        if "mm(" in line:
            break
        if "cpp_fused" in line:
            count += len(re.findall(r"\bbuf\d+\b", line))
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--fixed", action="store_true",
                        help="compile with diffquant's arguments (diffquant.memory.compile_kwargs)")
    parser.add_argument("--set", nargs="*", default=[], metavar="OPTION=INT",
                        help="inductor options to try, e.g. reorder_for_peak_memory=0 triton.cudagraphs=0")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TORCH_LOGS": "output_code"}
        proc = subprocess.run([sys.executable, "-c", CHILD, str(args.layers), "fixed" if args.fixed else "plain",
                               *args.set], env=env, capture_output=True, text=True, check=False)
    lines = [re.sub(r"^.*\[__output_code\]", "", ln) for ln in (proc.stdout + proc.stderr).splitlines()]
    wrapper = [ln for ln in lines if re.search(r"cpp_fused\w*\((arg|buf)|= empty_strided_cpu\(|mm\(|del buf", ln)]
    print(next((ln for ln in lines if ln.startswith("torch.compile kwargs:")), ""))
    print("\n".join(wrapper) if wrapper else "\n".join(lines[-20:]))
    print(f"\ndequantized weights written before the first mm: {written_before_first_mm(wrapper)} "
          f"of {args.layers} layers")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
