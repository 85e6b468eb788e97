"""Visual results: comparison grids (PNG) and a self-contained HTML report.

    write_report(db_path, out_html)   # report.html + report_files/ (grids, images) beside it
    write_grid(db_path, out_png)      # the comparison grid of every sweep, one PNG

Importing this package is cheap: Pillow, matplotlib and jinja2 load inside the functions.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_grid", "write_report"]


def write_report(db_path: Path, out_html: Path, *, reference: str | None = None, inline: bool = False) -> Path:
    """Write the HTML report of ``db_path`` to ``out_html`` (atomically) and return its path.

    Images go to a ``<name>_files/`` folder beside the page, or into the page itself with
    ``inline=True`` (one file to send around). ``reference`` defaults to the recipe the stored
    quality scores were computed against, else ``bf16``.
    """
    from diffquant.report.html import write_html

    return write_html(Path(db_path), Path(out_html), reference=reference, inline=inline)


def write_grid(db_path: Path, out_png: Path, *, reference: str | None = None, max_rows: int = 12) -> Path:
    """Write the comparison grid (rows = prompt × seed, columns = recipes, reference first)."""
    from diffquant.report.collect import collect
    from diffquant.report.grid import render_grid, save_png_atomic

    data = collect(Path(db_path), reference)
    return save_png_atomic(render_grid(data.sweeps, max_rows=max_rows), Path(out_png))
