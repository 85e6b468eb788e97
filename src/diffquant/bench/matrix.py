"""What works on this machine: backend × offload × compile, each cell a real run in its own
worker process (load, one short call), with a short timeout.

A cell is ``ok`` (ran; first-call latency shown), ``fails`` (the worker errored, crashed or timed
out - the reason is kept), ``n/a`` (refused before running: ``why_not_here`` says this device
cannot do it) or ``invalid`` (the combination is not a valid recipe).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from diffquant.bench.runner import run_worker
from diffquant.bench.spec import BenchSettings, RunSpec
from diffquant.errors import DiffquantError

DEFAULT_QUANT = ("bf16", "bnb-nf4", "bnb-int8", "torchao-int8wo", "torchao-int4wo", "torchao-fp8wo",
                 "quanto-int8", "quanto-int4", "gguf-q8_0", "gguf-q4_1", "fp8-layerwise")
DEFAULT_OFFLOAD = ("none", "offload-model", "offload-group-leaf", "offload-group-leaf(disk)")
COMPILE_TOKEN = "compile"


@dataclass
class Cell:
    quant: str
    offload: str
    compiled: bool
    recipe: str
    status: str = "pending"  # ok | fails | n/a | invalid
    reason: str | None = None
    first_call_s: float | None = None
    wall_s: float | None = None

    @property
    def column(self) -> str:
        return self.offload + (" +compile" if self.compiled else "")


def recipe_text(quant: str, offload: str, compiled: bool) -> str:
    parts = [quant] + ([] if offload in ("", "none") else [offload]) + ([COMPILE_TOKEN] if compiled else [])
    return "+".join(parts)


def plan_cells(quant: Sequence[str], offload: Sequence[str], compile_modes: Sequence[bool], device: str) -> list[Cell]:
    from diffquant.backends import why_not_here
    from diffquant.recipes import parse_recipe

    cells = []
    for q in quant:
        for o in offload:
            for c in compile_modes:
                text = recipe_text(q, o, c)
                cell = Cell(q, o, c, text)
                try:
                    recipe = parse_recipe(text)
                    cell.recipe = recipe.name
                    reason = why_not_here(recipe, "cuda" if device.startswith("cuda") else device)
                    if reason:
                        cell.status, cell.reason = "n/a", reason
                except DiffquantError as exc:
                    cell.status, cell.reason = "invalid", str(exc).splitlines()[0]
                cells.append(cell)
    return cells


def run_matrix(model: str, settings: BenchSettings, cells: list[Cell], *, timeout_s: float = 180.0,
               quant_cache_dir: Path | None = None, on_cell: Callable[[Cell, str], None] | None = None,
               worker_argv: Sequence[str] | None = None) -> list[Cell]:
    """Run every pending cell in its own worker; ``on_cell(cell, "start"|"done")`` reports progress."""
    for cell in cells:
        if cell.status != "pending":
            if on_cell:
                on_cell(cell, "done")
            continue
        if on_cell:
            on_cell(cell, "start")
        workdir = Path(tempfile.mkdtemp(prefix="diffquant-cell-"))
        try:
            spec = RunSpec.build(model, cell.recipe, settings, result_path=workdir / "result.json",
                                 image_dir=workdir / "images", save_images=False,
                                 quant_cache_dir=str(quant_cache_dir) if quant_cache_dir else None)
            started = time.monotonic()
            outcome = run_worker(spec, workdir, timeout_s=timeout_s, argv=worker_argv)
            cell.wall_s = time.monotonic() - started
            if outcome.status == "ok":
                cell.status = "ok"
                cell.first_call_s = outcome.metrics.get("first_call.latency_s")
            else:
                cell.status = "fails"
                cell.reason = _reason(outcome.error or "")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if on_cell:
            on_cell(cell, "done")
    return cells


def _reason(error: str) -> str:
    """The most telling line of a worker's error: the exception line of a traceback, else the first."""
    lines = [ln.strip() for ln in error.splitlines() if ln.strip()]
    if not lines:
        return "unknown failure"
    head = lines[0]
    if head.startswith("worker ") and len(lines) > 1:  # crash / timeout: add the log's last exception line
        exc_lines = [ln for ln in lines[1:] if ":" in ln and not ln.startswith(("File ", "---"))]
        if exc_lines:
            return f"{head}: {exc_lines[-1]}"
    return head


def matrix_table(cells: Sequence[Cell]) -> tuple[list[str], list[list[str]], list[str]]:
    """Headers, rows (one per quant) and numbered footnotes with the reasons."""
    columns: list[str] = []
    for cell in cells:
        if cell.column not in columns:
            columns.append(cell.column)
    quants: list[str] = []
    for cell in cells:
        if cell.quant not in quants:
            quants.append(cell.quant)
    notes: list[str] = []
    by_key = {(c.quant, c.column): c for c in cells}
    rows = []
    for q in quants:
        row = [q]
        for col in columns:
            cell = by_key.get((q, col))
            if cell is None:
                row.append("")
                continue
            text = cell.status
            if cell.status == "ok" and cell.first_call_s is not None:
                text = f"ok {cell.first_call_s:.2g}s"
            if cell.reason:
                if cell.reason not in notes:
                    notes.append(cell.reason)
                text += f" [{notes.index(cell.reason) + 1}]"
            row.append(text)
        rows.append(row)
    return ["recipe"] + columns, rows, [f"[{i + 1}] {n}" for i, n in enumerate(notes)]


def cells_json(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    return [asdict(c) for c in cells]
