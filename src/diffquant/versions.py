"""Versions of everything that changes a result; recorded with every result and export."""

from __future__ import annotations

from importlib import metadata

# Beside these, every backend's own packages (its module's ``packages``).
CORE = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "tokenizers", "torchmetrics", "numpy",
        "pynvml", "nvidia-ml-py", "diffquant")
_ORDER = ("torch", "diffusers", "transformers", "accelerate")  # listed first, as they always were


def tracked() -> tuple[str, ...]:
    """Every distribution whose version is recorded: the core libraries and each backend's packages."""
    from diffquant.backends import tracked_packages

    return tuple(dict.fromkeys((*_ORDER, *tracked_packages(), *CORE)))


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in tracked():
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
