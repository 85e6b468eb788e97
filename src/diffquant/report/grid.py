"""Comparison grids like the seed's figures: rows = prompt × seed, columns = recipes (reference
first), each column headed by its recipe and key figures (peak memory, latency, primary quality
metric), each image with its own score underneath. Pillow only."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from diffquant.errors import DiffquantError
from diffquant.figures import ascii_inf, fmt_number, metric_title

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image, ImageDraw, ImageFont

    from diffquant.report.collect import RunView, SweepView

BG = (255, 255, 255)
INK = (20, 20, 28)
MUTED = (95, 99, 110)
REF = (24, 95, 170)
RULE = (220, 222, 228)
PAD = 8
LABEL_W = 230
MAX_ROWS = 12


def cell_size(width: int, height: int) -> tuple[int, int, int]:
    """(cell width, cell height, integer upscale factor or 0 for a downscale): small images are
    enlarged by a whole factor (pixels stay crisp), large ones shrunk to at most 384 px."""
    longest = max(width, height)
    if longest < 160:
        factor = -(-160 // longest)
        return width * factor, height * factor, factor
    if longest > 384:
        scale = 384 / longest
        return max(1, round(width * scale)), max(1, round(height * scale)), 0
    return width, height, 1


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: object, width: int, max_lines: int) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if draw.textlength(trial, font=font) <= width:  # type: ignore[arg-type]
            current = trial
            continue
        if current:
            lines.append(current)
        current = word
        while draw.textlength(current, font=font) > width and len(current) > 1:  # type: ignore[arg-type]
            cut = len(current) - 1
            while cut > 1 and draw.textlength(current[:cut] + "…", font=font) > width:  # type: ignore[arg-type]
                cut -= 1
            lines.append(current[:cut] + "…")
            current = ""
            break
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip(".,;: ") + "…"
    return lines


def column_lines(sweep: SweepView, run: RunView) -> list[tuple[str, tuple[int, int, int]]]:
    """The header under a column: key figures with their units."""
    lines = []
    peak, latency = run.cells.get("peak_mib"), run.cells.get("inference_s")
    col = sweep.column("peak_mib")
    if peak is not None and peak.value is not None and col is not None:
        lines.append((f"{peak.text} {col.label}", MUTED))
    if latency is not None and latency.value is not None:
        lines.append((f"{latency.text} latency p50", MUTED))
    metric = sweep.primary_metric
    if run.is_reference:
        lines.append(("reference", REF))
    elif metric is not None:
        row = run.score(metric.name)
        if row is not None:
            lines.append((f"{metric_title(metric.name)} {ascii_inf(fmt_number(row.mean, row.unit))}", INK))
    return lines


def render_sweep(sweep: SweepView, *, max_rows: int = MAX_ROWS, title: bool = True) -> Image.Image:
    """The grid of one sweep as a PIL image."""
    from PIL import Image, ImageDraw

    from diffquant.quality.batch import load_rgb

    runs = [r for r in sweep.runs if r.run.images]
    if not runs:
        raise DiffquantError(f"Sweep {sweep.label} has no successful run with images to show.")
    keys = sorted({im.key for r in runs for im in r.run.images})
    truncated = len(keys) > max_rows
    keys = keys[:max_rows]
    prompts = {im.key: im.prompt for r in runs for im in r.run.images}
    first = load_rgb(runs[0].images_sorted()[0].path)
    cw, ch, _ = cell_size(*first.size)
    cw = max(cw, 150)
    font, small, big = _font(14), _font(12), _font(16)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    headers = []
    for run in runs:
        name_lines = _wrap(probe, run.recipe, big, cw, 3)
        fig_lines = [(line, colour) for text, colour in column_lines(sweep, run)
                     for line in _wrap(probe, text, small, cw, 2)]
        headers.append((name_lines, fig_lines))
    header_h = PAD + max(len(n) * 19 + len(f) * 15 for n, f in headers) + PAD
    title_h = 30 if title else 0
    score_h = 18
    row_h = ch + score_h + PAD
    footer_h = 22 if truncated else 0
    width = LABEL_W + len(runs) * (cw + PAD) + PAD
    height = title_h + header_h + len(keys) * row_h + PAD + footer_h
    canvas = Image.new("RGB", (width, height), BG)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((PAD, PAD), sweep.label, fill=INK, font=big)
    metric = sweep.primary_metric
    for c, (run, (name_lines, fig_lines)) in enumerate(zip(runs, headers)):
        x = LABEL_W + c * (cw + PAD)
        y = title_h + PAD
        for line in name_lines:
            draw.text((x, y), line, fill=REF if run.is_reference else INK, font=big)
            y += 19
        for line, colour in fig_lines:
            draw.text((x, y), line, fill=colour, font=small)
            y += 15
        by_key = {im.key: im for im in run.run.images}
        for r, key in enumerate(keys):
            y0 = title_h + header_h + r * row_h
            im = by_key.get(key)
            if im is None or not Path(im.path).exists():
                draw.rectangle((x, y0, x + cw - 1, y0 + ch - 1), fill=(240, 240, 243), outline=RULE)
                draw.text((x + PAD, y0 + ch // 2 - 7), "no image", fill=MUTED, font=small)
                continue
            img = load_rgb(im.path)
            resample = Image.Resampling.NEAREST if img.width < cw else Image.Resampling.LANCZOS
            canvas.paste(img.resize((cw, ch), resample), (x, y0))
            value = run.image_quality.get(im.id, {}).get(metric.name) if metric and not run.is_reference else None
            text = "reference" if run.is_reference else (
                f"{metric_title(metric.name)} {ascii_inf(fmt_number(value, metric.unit))}"
                if metric and value is not None else "")
            if text:
                draw.text((x, y0 + ch + 2), text, fill=REF if run.is_reference else MUTED, font=small)
    for r, key in enumerate(keys):
        y0 = title_h + header_h + r * row_h
        draw.line((PAD, y0 - PAD // 2, width - PAD, y0 - PAD // 2), fill=RULE)
        draw.text((PAD, y0), f"prompt {key[0]} · seed {key[1]}", fill=INK, font=font)
        for i, line in enumerate(_wrap(draw, prompts.get(key, ""), small, LABEL_W - 2 * PAD, 7)):
            draw.text((PAD, y0 + 20 + i * 15), line, fill=MUTED, font=small)
    if truncated:
        draw.text((PAD, height - footer_h + 4), f"first {max_rows} of {len({im.key for r in runs for im in r.run.images})}"
                  " prompt × seed rows shown", fill=MUTED, font=small)
    return canvas


def render_grid(sweeps: list[SweepView], *, max_rows: int = MAX_ROWS) -> Image.Image:
    """Every sweep's grid stacked vertically (each titled with its model, device and settings)."""
    from PIL import Image

    parts = [render_sweep(s, max_rows=max_rows) for s in sweeps if any(r.run.images for r in s.runs)]
    if not parts:
        raise DiffquantError("No successful run with images in the database: nothing to put in a grid.",
                             hint="run `diffquant bench` first; failed runs have no images")
    width = max(p.width for p in parts)
    canvas = Image.new("RGB", (width, sum(p.height for p in parts)), BG)
    y = 0
    for part in parts:
        canvas.paste(part, (0, y))
        y += part.height
    return canvas


def save_png_atomic(image: Image.Image, out: Path) -> Path:
    from diffquant.images import save_png

    return save_png(image, out)
