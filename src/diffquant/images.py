"""Writing images: PNG with its provenance in the metadata, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffquant.atomic import atomic_path


def save_png(image: Any, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``image`` as PNG (provenance as ``diffquant.*`` text chunks) to a temp name, then rename."""
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(f"diffquant.{key}", str(value))
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path
