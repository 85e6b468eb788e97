"""Render the tables of numbers in README.md and docs/*.md from committed data files.

A table lives between two marker lines; everything between them is written by this script:

    <!-- table:NAME source=docs/data/X.json [view=VIEW] [columns=C1,C2*,...] [reference=bf16] -->
    | ... |
    <!-- /table -->

    python scripts/render_docs.py            # rewrite every marked table from its data
    python scripts/render_docs.py --check    # exit 1 and name each table that disagrees with its data

Views (how a data file becomes rows):
- ``rows`` (default for files without ``runs``): ``data["tables"][NAME]`` with ``columns`` and
  ``rows`` (cells are strings, numbers or null; ``formats`` optionally gives a ``str.format``
  pattern per column for numbers).
- ``runs`` (default for files with ``runs``, i.e. ``diffquant results --format json`` output):
  one row per run, columns picked by counter name with ``columns=recipe,gen.peak_rss_mib*,...``
  (``*``: add the ratio to the reference run, ``reference=`` recipe, default bf16). Keys the view
  does not name are ignored, so the export can grow.
- ``cpu_recipes``: ``benchmarks/bench_recipes_cpu.py``'s table of a ``runs`` file.
- ``shapes_eval``: the adherence table of ``python -m diffquant.zoo.shapes.evaluate --json``.
- ``shapes_attributes``: the same file's adherence beside per-attribute accuracy and all-attributes-right,
  seen and held-out, for ``variants=`` (default ``bf16,random``).
- ``gpu_check``: the table of a ``benchmarks/gpu_check.py`` result JSON.
- ``sensitivity_mix``: the table of ``benchmarks/sensitivity_mix.py``'s result JSON.
- ``script``: a table that a script's own renderer makes of its data (``script=``, ``function=`` default
  ``render``, ``arg=`` a key of the data, ``table=`` which of its tables, default 0).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- table:(?P<name>[\w.-]+)(?P<attrs>(?:\s+[\w-]+=\S+)*)\s*-->\s*$")
END = "<!-- /table -->"
MIB = 1024 * 1024

Table = tuple[list[str], list[list[str]]]


class DocsError(Exception):
    """A marker, data file or view that cannot be rendered (the message says which and why)."""


@dataclass(frozen=True)
class Block:
    """One marked table: where it is and what renders it."""

    path: Path
    name: str
    attrs: dict[str, str]
    start: int  # index of the opening marker line
    end: int  # index of the closing marker line
    body: tuple[str, ...] = field(default=())

    @property
    def where(self) -> str:
        return f"{self.path}:{self.start + 1} table:{self.name}"


def in_code_fence(lines: Sequence[str]) -> set[int]:
    """Indices of the lines inside fenced code blocks (```), fences included."""
    inside, fenced = False, set()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced.add(i)
            inside = not inside
        elif inside:
            fenced.add(i)
    return fenced


def find_blocks(path: Path, lines: Sequence[str]) -> list[Block]:
    blocks: list[Block] = []
    fenced = in_code_fence(lines)
    i = 0
    while i < len(lines):
        if i in fenced:  # a marker shown in a code example is not a table
            i += 1
            continue
        match = MARKER.match(lines[i])
        if match is None:
            if lines[i].strip() == END:
                raise DocsError(f"{path}:{i + 1}: {END} without an opening <!-- table:NAME source=... -->")
            i += 1
            continue
        attrs = dict(a.split("=", 1) for a in match.group("attrs").split())
        if "source" not in attrs:
            raise DocsError(f"{path}:{i + 1}: table:{match.group('name')} has no source=docs/data/FILE.json")
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == END or MARKER.match(lines[j])), None)
        if end is None or lines[end].strip() != END:
            raise DocsError(f"{path}:{i + 1}: table:{match.group('name')} is not closed by {END}")
        blocks.append(Block(path, match.group("name"), attrs, i, end, tuple(lines[i + 1:end])))
        i = end + 1
    return blocks


FIGURE = re.compile(r"^(ok )?[-+]?\d[\d,]*(\.\d+)?( ?(MiB|GiB|MB/s|dB|s|ms|×|%))?( \(.*\))?$")


def unmarked_figure_tables(path: Path, lines: Sequence[str], blocks: Sequence[Block]) -> list[str]:
    """Pipe tables outside any marker that hold a cell which is a bare figure (``0.85``, ``12 s``,
    ``1.3 GiB``): such a table has no data file and would go stale."""
    inside = {i for b in blocks for i in range(b.start, b.end + 1)} | in_code_fence(lines)
    found, i = [], 0
    while i < len(lines):
        if lines[i].startswith("|") and i not in inside:
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            cells = [c.strip() for line in lines[i + 2:j] for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if any(FIGURE.match(c) for c in cells):
                found.append(f"{path}:{i + 1}: a table of figures without a <!-- table:NAME source=... --> marker")
            i = j
        else:
            i += 1
    return found


def markdown(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A pipe table in the docs' style; an empty cell is written as `` |`` (no double space)."""
    def line(cells: Sequence[str]) -> str:
        return "|" + "".join(f" {c} |" if c else " |" for c in cells)

    return [line(headers), "|" + "---|" * len(headers), *(line(r) for r in rows)]


# --- formatting (the same figures as the CLI's tables) ------------------------------------------

def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def fmt_counter(name: str, value: Any) -> str:
    """A counter's value with its unit, read from the counter's name."""
    from diffquant.figures import fmt_mib, fmt_s

    number = _number(value)
    if number is None:
        return "-" if value is None else str(value)
    if name.endswith("_bytes"):
        return fmt_mib(number / MIB)
    if name.endswith("_mib") or "_mib." in name:
        return fmt_mib(number)
    if name.endswith("_s") or "_s." in name:
        return fmt_s(number)
    return f"{number:g}"


def half_up(value: float, places: int) -> str:
    """Round the value as written (0.425 -> 0.43), not its binary float (0.42499...)."""
    from decimal import ROUND_HALF_UP, Decimal

    return str(Decimal(repr(value)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def fmt_ratio(mine: Any, theirs: Any) -> str:
    from diffquant.figures import fmt_ratio as ratio_text

    a, b = _number(mine), _number(theirs)
    return ratio_text(None if a is None or not b else a / b)


# --- views ----------------------------------------------------------------------------------------

def view_rows(data: Mapping[str, Any], block: Block) -> Table:
    tables = data.get("tables") or {}
    if block.name not in tables:
        raise DocsError(f"{block.where}: {block.attrs['source']} has no tables.{block.name} "
                        f"(it has: {', '.join(sorted(tables)) or 'none'})")
    table = tables[block.name]
    formats = table.get("formats") or [None] * len(table["columns"])

    def cell(value: Any, pattern: str | None) -> str:
        if value is None:
            return "-"
        return pattern.format(value) if pattern and _number(value) is not None else str(value)

    return list(table["columns"]), [[cell(v, f) for v, f in zip(row, formats, strict=True)] for row in table["rows"]]


def _runs(data: Mapping[str, Any], block: Block) -> list[Mapping[str, Any]]:
    if not isinstance(data.get("runs"), list):
        raise DocsError(f"{block.where}: {block.attrs['source']} has no 'runs' (write it with "
                        "`diffquant results --format json`)")
    return data["runs"]


def _references(runs: Sequence[Mapping[str, Any]], reference: str) -> dict[str, Mapping[str, Any]]:
    """The reference recipe's ok run per sweep (ratios compare runs of one sweep)."""
    return {str(r.get("sweep_id")): r for r in runs if r.get("recipe") == reference and r.get("status") == "ok"}


def _error_cell(run: Mapping[str, Any], limit: int = 110) -> str:
    from diffquant.store.summary import first_line

    return f"error: {first_line(str(run.get('error') or ''), limit).replace('|', '/')}"


def view_runs(data: Mapping[str, Any], block: Block) -> Table:
    """Columns named by counter; ``NAME*`` adds ``(n×)`` against the reference run."""
    runs = _runs(data, block)
    spec = block.attrs.get("columns", "recipe,status")
    reference = block.attrs.get("reference", "bf16")
    refs = _references(runs, reference)
    columns = [c for c in spec.split(",") if c]
    rows = []
    for run in runs:
        metrics, ref = run.get("metrics") or {}, refs.get(str(run.get("sweep_id")))
        cells = []
        for column in columns:
            name, with_ratio = column.rstrip("*"), column.endswith("*")
            if name in ("recipe", "status", "model", "sweep_id"):
                cells.append(str(run.get(name, "-")))
                continue
            if name == "error":
                cells.append(_error_cell(run) if run.get("status") != "ok" else "")
                continue
            text = fmt_counter(name, metrics.get(name))
            if with_ratio and metrics.get(name) is not None:
                text += f" ({fmt_ratio(metrics.get(name), (ref or {}).get('metrics', {}).get(name))})"
            cells.append(text)
        rows.append(cells)
    return [f"{c.rstrip('*')} (×{reference})" if c.endswith("*") else c for c in columns], rows


CPU_RECIPE_HEADERS = ("recipe", "weights (×bf16)", "after-load RSS", "of it: anon / mapped weight files",
                      "peak RSS, generating (×bf16)", "peak anon, generating", "load peak RSS",
                      "call p50 (×bf16)", "step p50", "first call", "compile", "load", "host load before/after")


MODEL_COUNTER = re.compile(r"^(load|gen)\.model_[\w.]*mib$")


def model_counters(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The model's own memory counters (after the imports' baseline) that any run carries: they
    get columns of their own, load before gen, whatever their exact names."""
    names = {k for r in runs for k in (r.get("metrics") or {}) if MODEL_COUNTER.match(k)}
    return sorted(names, key=lambda k: (not k.startswith("load."), k))


def view_cpu_recipes(data: Mapping[str, Any], block: Block) -> Table:
    """benchmarks/bench_recipes_cpu.py's table: per recipe the model's own memory (the process's
    beside it), the latency with its IQR and the ratio to bf16 with its bootstrap 95% CI, from the
    ``summary`` that ``diffquant results --format json`` exports with each run."""
    from diffquant.figures import fmt_mib, fmt_ratio, fmt_ratio_ci, fmt_s

    runs = _runs(data, block)
    headers = ["recipe", "weights (×bf16)", "after loading: model (process)",
               "peak generating: model (×bf16) (process)", "load peak: model (process)",
               "call p50 [IQR], n", "call ×bf16 [95% CI]", "host"]
    rows = []
    for run in runs:
        if run.get("status") != "ok":
            rows.append([str(run.get("recipe")), _error_cell(run)] + [""] * (len(headers) - 2))
            continue
        sm = run.get("summary") or {}

        def mem(key: str, ratio: bool = False, sm: Mapping[str, Any] = sm) -> str:
            text = fmt_mib(sm.get(key))
            if ratio and sm.get(f"{key}.ratio") is not None:
                text += f" ({fmt_ratio(sm.get(f'{key}.ratio'))})"
            if sm.get(f"{key}.process") is not None and not sm.get(f"{key}.fallback"):
                text += f" ({fmt_mib(sm.get(f'{key}.process'))})"
            return text

        latency = (f"{fmt_s(sm.get('inference_s'))} [{fmt_s(sm.get('inference_s.p25'))}–"
                   f"{fmt_s(sm.get('inference_s.p75'))}], {sm.get('inference_s.n')}")
        if (sm.get("inference_s.processes") or 1) > 1:  # bench --processes: calls pooled over fresh workers
            latency += f" in {sm['inference_s.processes']} proc"
        ratio = fmt_ratio_ci(sm.get("inference_s.ratio"), sm.get("inference_s.ratio_low"),
                             sm.get("inference_s.ratio_high")) if sm.get("inference_s.ratio") else "1.00×"
        host = "contended" if sm.get("contended") else "idle"
        rows.append([str(run.get("recipe")), f"{fmt_mib(sm.get('weights_mib'))} ({fmt_ratio(sm.get('weights_mib.ratio'))})",
                     mem("after_load_mib"), mem("peak_mib", True), mem("load_peak_mib"), latency, ratio, host])
    return headers, rows


SHAPES_LABELS = {"fp32": "fp32 compute (plain `from_pretrained`)", "random": "zoo:shapes-random (same architecture)"}
# The order docs/shapes.md discusses them in; variants not listed follow in the data's order.
SHAPES_ORDER = ("fp32", "random", "bf16", "gguf-q8_0", "bnb-int8", "torchao-int8wo", "gguf-q2_k", "gguf-q4_0",
                "quanto-int4", "bnb-nf4")


def view_shapes_eval(data: Mapping[str, Any], block: Block) -> Table:
    """Prompt adherence per variant from ``diffquant.zoo.shapes.evaluate --json``."""
    results = list(data.get("results") or [])
    if not results:
        raise DocsError(f"{block.where}: {block.attrs['source']} has no 'results'")
    rank = {name: i for i, name in enumerate(SHAPES_ORDER)}
    ordered = sorted(results, key=lambda r: rank.get(r["variant"], len(rank)))  # stable: data order after
    rows = [[SHAPES_LABELS.get(r["variant"], r["variant"]), half_up(r["seen"], 3), half_up(r["heldout"], 3),
             half_up(r["seen_by_attribute"]["shape"], 2), half_up(r["seen_by_attribute"]["size"], 2),
             half_up(r["seen_all_correct"], 2), half_up(r["heldout_by_attribute"]["shape"], 2),
             half_up(r["heldout_all_correct"], 2)] for r in ordered]
    return ["variant", "seen", "held-out", "shape (seen)", "size (seen)", "all attributes right (seen)",
            "shape (held-out)", "all attributes right (held-out)"], rows


SHAPES_ATTRIBUTES = ("shape", "colour", "background", "position", "size")


def view_shapes_attributes(data: Mapping[str, Any], block: Block) -> Table:
    """Adherence with each attribute's accuracy and all-attributes-right beside it, seen and held-out,
    for the variants named by ``variants=`` (default ``bf16,random``), from the same evaluation JSON."""
    by_name = {r["variant"]: r for r in data.get("results") or []}
    rows = []
    for name in block.attrs.get("variants", "bf16,random").split(","):
        if name not in by_name:
            raise DocsError(f"{block.where}: {block.attrs['source']} has no variant {name!r} "
                            f"(it has {', '.join(by_name) or 'none'})")
        r = by_name[name]
        label = SHAPES_LABELS.get(name, name).split(" (")[0]
        for split, what in (("seen", "seen prompts"), ("heldout", "held-out shape/colour pairs")):
            attrs = r[f"{split}_by_attribute"]
            rows.append([f"{label}, {what}", half_up(r[split], 2),
                         *(half_up(attrs[a], 2) if a in attrs else "—" for a in SHAPES_ATTRIBUTES),
                         half_up(r[f"{split}_all_correct"], 2)])
    return ["zoo:shapes", "adherence", *SHAPES_ATTRIBUTES, "all attributes right"], rows


def view_gpu_check(data: Mapping[str, Any], block: Block) -> Table:
    """The table ``benchmarks/gpu_check.py`` prints, from its result JSON."""
    if not isinstance(data.get("recipes"), dict):
        raise DocsError(f"{block.where}: {block.attrs['source']} is not a benchmarks/gpu_check.py result")
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    headers, rows = module.table(data["recipes"], str(data["settings"]["device"]).startswith("cuda"))
    return headers, rows


def view_sensitivity_mix(data: Mapping[str, Any], block: Block) -> Table:
    """Uniform vs rule-based vs sensitivity mixes from ``benchmarks/sensitivity_mix.py``. Bytes:
    the components the base recipe quantizes where the data has them, else the transformer."""
    import math

    rows_in = [r for r in data.get("rows") or [] if "recipe" in r]
    if not rows_in:
        raise DocsError(f"{block.where}: {block.attrs['source']} is not a benchmarks/sensitivity_mix.py result")
    uniform = {r["base"]: r for r in rows_in if r["kind"] == "uniform"}
    key = "quantized_components_bytes" if all("quantized_components_bytes" in r for r in rows_in) \
        else "transformer_bytes"
    rows = []
    for r in rows_in:
        u = uniform[r["base"]]
        psnr = r["quality"].get("psnr") or {}
        ssim = (r["quality"].get("ssim") or {}).get("mean")
        adherence = (r["quality"].get("shapes-adherence") or {}).get("mean")
        u_psnr = (u["quality"].get("psnr") or {}).get("mean")
        extra = (r[key] - u[key]) / u[key]
        removed = "" if r is u or u_psnr is None or psnr.get("mean") is None else \
            f"{100 * (1 - math.pow(10, -(psnr['mean'] - u_psnr) / 10)):.1f}%"
        rows.append([r["base"], r["kind"], f"{r[key] / MIB:.2f}", f"{100 * extra:+.1f}%",
                     (f"{psnr.get('mean', float('nan')):.2f} [{psnr.get('ci_low', float('nan')):.2f}, "
                      f"{psnr.get('ci_high', float('nan')):.2f}]"), "" if ssim is None else f"{ssim:.4f}",
                     "" if adherence is None else f"{adherence:.2f}", removed])
    size = "quantized components MiB" if key == "quantized_components_bytes" else "transformer MiB"
    return ["base recipe", "mix", size, "bytes vs uniform", "PSNR vs bf16, dB [95% CI]", "SSIM", "adherence",
            "error removed"], rows


def view_script(data: Mapping[str, Any], block: Block) -> Table:
    """The table a benchmark script renders itself: ``script=benchmarks/X.py`` whose ``render()``
    takes the data file (or its ``arg=`` key) and returns Markdown; its table lines are used."""
    path = ROOT / block.attrs.get("script", "")
    if not block.attrs.get("script") or not path.is_file():
        raise DocsError(f"{block.where}: view=script needs script=PATH of an existing benchmark script")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    arg = block.attrs.get("arg")
    text = getattr(module, block.attrs.get("function", "render"))(data[arg] if arg else data)
    tables: list[list[str]] = []
    previous = ""
    for line in (text if isinstance(text, str) else "\n".join(text)).splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(line)
        previous = line
    index = int(block.attrs.get("table", "0"))
    if index >= len(tables) or len(tables[index]) < 2:
        raise DocsError(f"{block.where}: {path.name}'s render gave no table {index}")
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in tables[index]]
    return cells[0], cells[2:]


VIEWS: dict[str, Callable[[Mapping[str, Any], Block], Table]] = {
    "script": view_script,
    "rows": view_rows, "runs": view_runs, "cpu_recipes": view_cpu_recipes, "shapes_eval": view_shapes_eval,
    "shapes_attributes": view_shapes_attributes,
    "gpu_check": view_gpu_check, "sensitivity_mix": view_sensitivity_mix,
}


# --- rendering, checking, writing ---------------------------------------------------------------

def load_data(root: Path, block: Block) -> Mapping[str, Any]:
    source = root / block.attrs["source"]
    if not source.is_file():
        raise DocsError(f"{block.where}: its data file {block.attrs['source']} does not exist")
    try:
        return json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DocsError(f"{block.where}: {block.attrs['source']} is not valid JSON ({exc})") from exc


def render_block(root: Path, block: Block) -> list[str]:
    data = load_data(root, block)
    view = block.attrs.get("view") or ("runs" if "runs" in data else "rows")
    if view not in VIEWS:
        raise DocsError(f"{block.where}: unknown view {view!r}; choose from {', '.join(sorted(VIEWS))}")
    headers, rows = VIEWS[view](data, block)
    return markdown(headers, rows)


def default_files(root: Path) -> list[Path]:
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


@dataclass
class Outcome:
    tables: int = 0
    stale: list[str] = field(default_factory=list)  # "where: first differing line"
    errors: list[str] = field(default_factory=list)
    rewritten: dict[Path, str] = field(default_factory=dict)


def process(root: Path, files: Sequence[Path]) -> Outcome:
    """Render every marked table of ``files``; collect which disagree and the rewritten texts."""
    out = Outcome()
    for path in files:
        text = path.read_text(encoding="utf-8")
        lines = text.split("\n")
        try:
            shown = path.relative_to(root) if path.is_relative_to(root) else path
            blocks = find_blocks(shown, lines)
        except DocsError as exc:
            out.errors.append(str(exc))
            continue
        out.errors.extend(unmarked_figure_tables(shown, lines, blocks))
        new_lines = list(lines)
        for block in reversed(blocks):  # from the end, so earlier line numbers stay valid
            out.tables += 1
            try:
                rendered = render_block(root, block)
            except (DocsError, KeyError, TypeError, ValueError) as exc:
                out.errors.append(exc.args[0] if isinstance(exc, DocsError) else f"{block.where}: {exc!r}")
                continue
            if list(block.body) != rendered:
                out.stale.append(f"{block.where} (source {block.attrs['source']}): {_first_difference(block.body, rendered)}")
                new_lines[block.start + 1:block.end] = rendered
        new_text = "\n".join(new_lines)
        if new_text != text:
            out.rewritten[path] = new_text
    return out


def _first_difference(have: Sequence[str], want: Sequence[str]) -> str:
    for i, (a, b) in enumerate(zip(have, want, strict=False)):
        if a != b:
            return f"line {i + 1} of the table is\n    {a}\n  the data gives\n    {b}"
    return f"the table has {len(have)} lines, the data gives {len(want)}"


def write_atomic(path: Path, text: str) -> None:
    from diffquant.atomic import write_text_atomic

    write_text_atomic(path, text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md and docs/*.md)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table disagrees with its data")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (data paths are relative to it)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    files = [f if f.is_absolute() else root / f for f in args.files] or default_files(root)
    out = process(root, files)
    for error in out.errors:
        print(f"error: {error}", file=sys.stderr)
    if args.check:
        for stale in out.stale:
            print(f"stale: {stale}", file=sys.stderr)
        ok = not out.stale and not out.errors
        print(f"{out.tables} tables checked: " + ("all agree with their data" if ok else
              f"{len(out.stale)} disagree, {len(out.errors)} cannot be rendered"))
        return 0 if ok else 1
    for path, text in out.rewritten.items():
        write_atomic(path, text)
        print(f"rewrote {path.relative_to(root) if path.is_relative_to(root) else path}")
    print(f"{out.tables} tables rendered, {len(out.rewritten)} files changed")
    return 1 if out.errors else 0


if __name__ == "__main__":
    sys.exit(main())
