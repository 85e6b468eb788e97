"""The worker reads mapped weight files into the page cache inside the generation phase; its read
buffer is the worker's own memory and must stay small beside a model's activations (a 16 MiB one
showed up in zoo:shapes' bnb-nf4 generation peak)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from diffquant.bench.phases import READ_CHUNK, read_through

MIB = 1024 * 1024


def _peak_allocated(path: Path, **kwargs: int) -> int:
    tracemalloc.start()
    try:
        assert read_through([str(path)], **kwargs) == path.stat().st_size
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_reading_a_weight_file_through_allocates_a_small_buffer(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\1" * (8 * MIB + 123))
    assert READ_CHUNK <= MIB
    assert _peak_allocated(path) < 2 * MIB
    # negative control: the old 16 MiB buffer allocates more than the whole file
    assert _peak_allocated(path, chunk=16 * MIB) >= 8 * MIB
