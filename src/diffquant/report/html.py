"""The HTML report: one page (jinja2 template shipped in ``templates/``), plots as inline SVG,
images in a ``<name>_files/`` folder beside it or inlined as data URIs. No server, no CDN: it
opens from disk in any browser. Written to temporary names and renamed into place."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffquant.figures import (
    ascii_inf,
    counter_label,
    counter_unit,
    fmt_number,
    format_estimate,
    metric_title,
)
from diffquant.report.collect import ReportData, RunView, SweepView, collect

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

TEMPLATES = Path(__file__).parent / "templates"


class Assets:
    """Files the page links to: copied into the files folder, or inlined as data URIs."""

    def __init__(self, folder: Path, href_prefix: str, inline: bool) -> None:
        self.folder, self.prefix, self.inline = folder, href_prefix, inline
        self._done: dict[str, str] = {}

    def _href(self, name: str) -> str:
        from urllib.parse import quote

        return f"{quote(self.prefix)}/{quote(name)}"

    def image(self, image: Image.Image, name: str) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
        return self.data(buffer.getvalue(), name)

    def data(self, payload: bytes, name: str) -> str:
        if self.inline:
            return "data:image/png;base64," + base64.b64encode(payload).decode("ascii")
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / name).write_bytes(payload)
        return self._href(name)

    def file(self, path: Path, name: str) -> str | None:
        """A PNG from disk (None if it is missing: the page then says so instead of a broken image)."""
        if name in self._done:
            return self._done[name]
        if not Path(path).is_file():
            return None
        if self.inline:
            href = self.data(Path(path).read_bytes(), name)
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.folder / name)
            href = self._href(name)
        self._done[name] = href
        return href


def _value_text(name: str, value: Any) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return "—" if value is None else str(value)
    if isinstance(value, (int, float)):
        unit = counter_unit(name)
        if unit == "bytes":
            return f"{value / 2**20:,.2f} MiB ({int(value):,} bytes)"
        if unit == "MiB" and value >= 1024:
            return f"{value / 1024:,.3f} GiB ({value:,.1f} MiB)"
        if isinstance(value, int):
            return f"{value:,}{' ' + unit if unit else ''}"
        return fmt_number(float(value), unit)
    return json.dumps(value, default=str)


def _counters(run: RunView) -> list[dict[str, str]]:
    return [{"name": name, "label": counter_label(name), "value": _value_text(name, value)}
            for name, value in sorted(run.run.metrics.items())]


def _image_caption(run: RunView, image_id: Any, metrics: list[Any]) -> str:
    if run.is_reference:
        return "reference"
    scores = run.image_quality.get(image_id, {})
    parts = [f"{metric_title(m.name)} {fmt_number(scores[m.name], m.unit)}" for m in metrics
             if scores.get(m.name) is not None]
    return " · ".join(parts)


def _sweep_context(sweep: SweepView, assets: Assets, index: int) -> dict[str, Any]:
    from diffquant.report.grid import render_sweep
    from diffquant.report.plots import memory_latency_svg, quality_memory_svg

    grid = None
    if any(r.run.images for r in sweep.runs):
        grid = assets.image(render_sweep(sweep, title=False), f"grid-{index}.png")
    plots = []
    svg = memory_latency_svg(sweep)
    if svg:
        plots.append({"title": "Peak memory vs latency", "svg": svg})
    from diffquant.report.fits import fits_rows
    from diffquant.report.plots import pareto3_svg

    if sweep.primary_metric is not None:
        svg = pareto3_svg(sweep, sweep.primary_metric)
        if svg:
            plots.append({"title": "Memory × latency × quality: the Pareto-optimal recipes", "svg": svg})
    quality_plots = []
    for metric in sweep.metrics:
        svg = quality_memory_svg(sweep, metric)
        if svg:
            quality_plots.append({"title": f"{metric_title(metric.name)} vs peak memory", "svg": svg})
    runs = []
    for run in sweep.runs:
        images = []
        for im in run.images_sorted():
            href = assets.file(im.path, f"run{run.run.id}-p{im.prompt_index}-s{im.seed}.png")
            images.append({"href": href, "prompt": im.prompt, "prompt_index": im.prompt_index, "seed": im.seed,
                           "caption": _image_caption(run, im.id, sweep.metrics), "path": str(im.path)})
        quality = []
        for metric in sweep.metrics:
            row = run.quality.get(metric.name)
            quality.append({"metric": metric, "title": metric_title(metric.name), "text": run.quality_text(metric.name),
                            "status": row.status if row else "not scored", "reason": row.reason if row else None,
                            "n": row.n if row else None, "sort": _sort_value(row)})
        runs.append({"view": run, "images": images, "quality": quality, "counters": _counters(run),
                     "settings": json.dumps(run.run.settings, indent=1, sort_keys=True, default=str)})
    failed = [{"run": f, "first_line": (f.error or "no error text recorded").strip().splitlines()[0][:300],
               "error": f.error or ""} for f in sweep.failed]
    return {"view": sweep, "grid": grid, "plots": plots, "fits": fits_rows(sweep), "quality_plots": quality_plots, "runs": runs,
            "failed": failed, "metrics": [{"info": m, "title": metric_title(m.name)} for m in sweep.metrics],
            "unavailable": [{"title": metric_title(k), "name": k, "reasons": v} for k, v in sweep.unavailable.items()],
            "notes": [{"title": metric_title(k), "reasons": v} for k, v in sweep.notes.items()]}


def _sort_value(row: Any) -> str:
    if row is None or row.mean is None:
        return ""
    return "1e308" if math.isinf(row.mean) and row.mean > 0 else str(row.mean)


def _env_value(key: str, value: Any) -> str:
    if key.endswith("_bytes") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value / 2**30:.1f} GiB"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return "—" if value is None else str(value)


def _merge(labelled: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per key; a key whose value differs between runs lists each value with its runs."""
    keys: list[str] = []
    for _, values in labelled:
        keys += [k for k in values if k not in keys]
    rows = []
    for key in keys:
        groups: dict[str, list[str]] = {}
        for label, values in labelled:
            if key in values:
                groups.setdefault(_env_value(key, values[key]), []).append(label)
        rows.append({"key": key, "values": [{"value": v, "runs": runs} for v, runs in groups.items()],
                     "differs": len(groups) > 1})
    return rows


def environment_tables(envs: list[tuple[str, dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """The runs' environments merged: fields and package versions, differences called out."""
    fields = [(label, {k: v for k, v in env.items() if k != "packages"}) for label, env in envs]
    packages = [(label, {k: v for k, v in (env.get("packages") or {}).items() if v}) for label, env in envs]
    return {"fields": _merge(fields), "packages": _merge(packages)}


def render_html(data: ReportData, assets: Assets) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    from diffquant._version import __version__

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html", "j2"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["est"] = format_estimate
    env.filters["ascii_inf"] = ascii_inf
    template = env.get_template("report.html.j2")
    from diffquant.arena.summary import report_sections  # the blind test's votes, if any

    return template.render(
        arena=report_sections(data.db_path),
        data=data, sweeps=[_sweep_context(s, assets, i) for i, s in enumerate(data.sweeps)],
        environment=environment_tables(data.environments),
        css=(TEMPLATES / "report.css").read_text(encoding="utf-8"),
        js=(TEMPLATES / "report.js").read_text(encoding="utf-8"),
        version=__version__, generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        metric_titles={m.name: metric_title(m.name) for m in data.metric_infos})


def write_html(db_path: Path, out_html: Path, *, reference: str | None = None, inline: bool = False) -> Path:
    data = collect(db_path, reference)
    out_html = Path(out_html).expanduser().resolve()
    out_html.parent.mkdir(parents=True, exist_ok=True)
    files_name = f"{out_html.stem}_files"
    with tempfile.TemporaryDirectory(prefix=f".{out_html.stem}.", dir=out_html.parent) as tmp:
        staged_files = Path(tmp) / files_name
        html = render_html(data, Assets(staged_files, files_name, inline))
        staged_html = Path(tmp) / out_html.name
        staged_html.write_text(html, encoding="utf-8")
        if staged_files.exists():
            final_files = out_html.parent / files_name
            old = Path(tmp) / "old_files"
            if final_files.exists():
                os.replace(final_files, old)
            os.replace(staged_files, final_files)
        os.replace(staged_html, out_html)
    return out_html
