"""GGUF export: any diffusers model (e.g. a FLUX transformer) to a GGUF file, in pure Python.

The ``gguf`` package writes F16/BF16/Q8_0/Q5_x/Q4_x; the K-quants (Q2_K..Q6_K), which it can
only read, are diffquant's own vectorised ports of ggml's reference quantizers (``kquants``).

    from diffquant.gguf_writer import export_gguf
    result = export_gguf(Path("flux-pipeline"), Path("flux-Q4_K.gguf"), "Q4_K")

Importing this package loads numpy only; torch, safetensors and gguf load when a file is written.
"""

from __future__ import annotations

from diffquant.gguf_writer.quantize import SUPPORTED_TYPES, dequantize_array, quantize_array
from diffquant.gguf_writer.writer import WRITER_VERSION, ExportResult, export_gguf

__all__ = ["SUPPORTED_TYPES", "WRITER_VERSION", "ExportResult", "dequantize_array", "export_gguf",
           "quantize_array"]
