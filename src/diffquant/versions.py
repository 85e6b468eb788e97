"""Versions of everything that changes a result; recorded with every result and export."""

from __future__ import annotations

from importlib import metadata

TRACKED = ("torch", "diffusers", "transformers", "accelerate", "bitsandbytes", "torchao", "optimum-quanto",
           "gguf", "safetensors", "tokenizers", "torchmetrics", "numpy", "pynvml", "nvidia-ml-py", "diffquant")
TRACKED += ("sdnq", "nvidia-modelopt")  # the optional backends added with issue 14


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in TRACKED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
