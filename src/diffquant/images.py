"""Writing images: PNG with its provenance in the metadata, written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def save_png(image: Any, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``image`` as PNG (provenance as ``diffquant.*`` text chunks) to a temp name, then rename."""
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(f"diffquant.{key}", str(value))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        image.save(tmp, format="PNG", pnginfo=info)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a kept file gets the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
