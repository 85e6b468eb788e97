"""Quantization throughput of diffquant's GGUF writer, per type, next to the gguf package's.

    python benchmarks/bench_gguf_quantize.py [--rows 3072 --cols 3072 --repeats 3 --threads 1]

Throughput is MB of float32 input per second (best of --repeats), single process. diffquant's
K-quants are its own numpy code; for the other types diffquant calls the gguf package chunk by
chunk, so both columns run the same quantizer. The gguf package cannot write K-quants at all.
The last column quotes llama.cpp's own C quantizer (ggml reference, single thread, 3072x12288,
from docs/CPU-FACTS) for scale; it is not measured here. Also printed: the relative RMS error
of each type on this (standard normal) matrix.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from importlib.metadata import version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3072)
    parser.add_argument("--cols", type=int, default=3072, help="row length; a multiple of 256")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="chunks diffquant quantizes in parallel (also torch/BLAS threads); default 1")
    parser.add_argument("--types", default=None, help="comma-separated subset, e.g. Q4_K,Q8_0")
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))

    import gguf
    import numpy as np
    import torch

    from diffquant.gguf_writer import SUPPORTED_TYPES, dequantize_array, quantize_array

    torch.set_num_threads(args.threads)
    # llama.cpp's ggml reference quantizer, MB/s single thread (CPU-FACTS); quoted, not measured.
    ggml_reference = {"Q8_0": 813, "Q5_0": 1236, "Q5_1": 1097, "Q4_0": 1434, "Q4_1": 1630,
                      "Q2_K": 74, "Q3_K": 361, "Q4_K": 65, "Q5_K": 79, "Q6_K": 140}
    types = [t.strip().upper() for t in args.types.split(",")] if args.types else list(SUPPORTED_TYPES)
    x = np.random.default_rng(0).standard_normal((args.rows, args.cols)).astype(np.float32)
    mb = x.nbytes / 1e6

    def best_of(fn) -> tuple[float, object]:
        best, out = float("inf"), None
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - start)
        return best, out

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}, "
          f"gguf {version('gguf')}, threads {args.threads}; "
          f"{args.rows}x{args.cols} float32 ({mb:.1f} MB), best of {args.repeats}")
    print(f"{'type':6} {'bits/w':>6} {'diffquant MB/s':>15} {'gguf pkg MB/s':>14} {'ggml ref MB/s':>14} {'rel RMS err':>12}")
    for qtype in types:
        if qtype == "F32":
            continue  # a copy, nothing to measure
        seconds, data = best_of(lambda q=qtype: quantize_array(x, q, args.threads))
        err = float(np.sqrt(np.mean((dequantize_array(data, qtype) - x) ** 2)) / np.sqrt(np.mean(x**2)))
        gtype = gguf.GGMLQuantizationType[qtype]
        try:
            gseconds, _ = best_of(lambda g=gtype: gguf.quants.quantize(x, g))
            gtext = f"{mb / gseconds:14.1f}"
        except NotImplementedError:
            gtext = f"{'(read-only)':>14}"
        bits = 8 * data.nbytes / x.size
        ref = ggml_reference.get(qtype)
        reftext = f"{ref:14d}" if ref else f"{'':>14}"
        print(f"{qtype:6} {bits:6.2f} {mb / seconds:15.1f} {gtext} {reftext} {err:12.5f}")


if __name__ == "__main__":
    main()
