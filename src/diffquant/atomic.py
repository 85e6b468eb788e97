"""Writing files a reader must never see half-written: the one way diffquant does it.

Write to a temporary name in the same folder (so the rename stays on one file system), then
``os.replace`` it onto the final name; on any error the temporary is removed and the old file, if
any, is left as it was. Kept files get the usual mode (``mkstemp`` makes them 0600).

    with atomic_path(out, suffix=".png") as tmp:   # any writer that takes a path
        image.save(tmp, format="PNG")
    write_text_atomic(out, text)                   # text / bytes / JSON in one call
    with atomic_dir(folder, done="model_index.json") as tmp:   # a folder built in one go
        build(tmp)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path | str, *, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends
    without an error, removed otherwise. ``suffix`` helps writers that read the extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone already after the rename


def write_text_atomic(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def write_bytes_atomic(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: Path | str, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, default=str))


@contextlib.contextmanager
def atomic_dir(folder: Path | str, *, done: str | None = None) -> Iterator[Path]:
    """A temporary folder beside ``folder`` to build in; renamed onto ``folder`` when the block ends
    without an error. If another process finished the same folder first (the rename fails and
    ``folder/done`` exists), theirs is kept. The temporary folder never outlives the block."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        yield tmp
        try:
            os.replace(tmp, folder)
        except OSError:
            if done is None or not (folder / done).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
