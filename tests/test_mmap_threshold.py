"""``file_pages.fix_mmap_threshold``: with glibc's mmap threshold pinned, a loop that re-allocates
every weight on every call (what FP8 layerwise casting does: a bf16 copy before each layer, a new
float8 copy after it) keeps no freed copies resident; with glibc's sliding default (the negative
control, a fresh process each) the same loop leaves them in the heap."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")

SRC = Path(__file__).resolve().parents[1] / "src"
CHURN = textwrap.dedent("""
    import sys
    import torch
    if sys.argv[1] == "pinned":
        from diffquant.file_pages import fix_mmap_threshold
        assert fix_mmap_threshold()

    def anon_mib():
        with open("/proc/self/status") as handle:
            return next(int(l.split()[1]) for l in handle if l.startswith("RssAnon:")) / 1024

    weights = [torch.ones(9 << 20, dtype=torch.uint8) for _ in range(24)]  # "float8" weights
    start = anon_mib()
    for _ in range(2):
        for i in range(len(weights)):  # per layer: upcast, run, cast back
            upcast = torch.ones(18 << 20, dtype=torch.uint8)
            weights[i] = None
            weights[i] = torch.ones(9 << 20, dtype=torch.uint8)
            del upcast
    print(round(anon_mib() - start))
""")


def _growth_mib(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, check=True)
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt and /proc/self/status")
def test_pinned_threshold_keeps_per_call_copies_out_of_the_heap() -> None:
    default, pinned = _growth_mib("default"), _growth_mib("pinned")
    assert default >= 9 * 4, default  # glibc's sliding threshold keeps freed copies (measured ~160 MiB)
    assert pinned <= 9, pinned  # at most one block's worth


def test_layerwise_fp8_pins_it_on_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffquant import file_pages
    from diffquant.backends import get_backend
    from diffquant.recipes.model import QuantSpec

    monkeypatch.setattr(file_pages, "on_glibc", lambda: True)

    layerwise = get_backend("layerwise")
    spec = QuantSpec(backend="layerwise", qtype="e4m3")
    assert any("MALLOC_MMAP_THRESHOLD_" in n for n in layerwise.notes(spec, "cpu"))
    assert layerwise.notes(spec, "cuda") == []


def test_the_note_says_so_where_the_threshold_cannot_be_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffquant import file_pages
    from diffquant.backends import get_backend
    from diffquant.recipes.model import QuantSpec

    monkeypatch.setattr(file_pages, "on_glibc", lambda: False)
    layerwise = get_backend("layerwise")
    notes = layerwise.notes(QuantSpec(backend="layerwise", qtype="e4m3"), "cpu")
    assert notes and not any("is pinned" in n for n in notes), notes
    assert any("cannot pin" in n for n in notes), notes
    assert file_pages.fix_mmap_threshold() is False  # and nothing is attempted
