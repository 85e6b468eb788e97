"""``measure.minor_page_faults``: touching fresh memory counts one fault per page; touching the same
pages again (the negative control) counts none."""

from __future__ import annotations

import mmap
import platform

import pytest

from diffquant.bench.measure import minor_page_faults


@pytest.mark.skipif(platform.system() == "Windows", reason="getrusage")
def test_fresh_pages_fault_and_touched_ones_do_not() -> None:
    pages = 4096
    size = pages * mmap.PAGESIZE
    block = mmap.mmap(-1, size)  # anonymous: no page is backed until it is written
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # one fault per 4 KiB page, not per 2 MiB huge page
        block.madvise(mmap.MADV_NOHUGEPAGE)
    before = minor_page_faults()
    assert before is not None
    for offset in range(0, size, mmap.PAGESIZE):
        block[offset] = 1
    fresh = minor_page_faults() - before  # type: ignore[operator]
    again_before = minor_page_faults()
    for offset in range(0, size, mmap.PAGESIZE):
        block[offset] = 2
    again = minor_page_faults() - again_before  # type: ignore[operator]
    block.close()
    assert fresh >= pages * 0.9, fresh
    assert again <= pages * 0.05, again
