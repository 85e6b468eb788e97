"""Numbers for people, in one place: every figure with its unit, every memory figure with its
counter, every ratio as this run / the reference.

Two registers, both here: the text tables (CLI, Markdown, model cards: ``fmt_mib``, ``fmt_s``,
``format_bytes``; "-" for a missing value) and the HTML report and grid (``fmt_memory`` with a unit
chosen per column, ``fmt_seconds``, ``fmt_number`` and ``format_estimate`` for scores; "—").
Ratios: ``0.50×`` in text tables and confidence intervals (``fmt_ratio``, ``fmt_ratio_ci``), ``×0.50``
beside a figure in the report's cells (``report_ratio``).
No imports beyond the standard library: any floor of the package may use it.
"""

from __future__ import annotations

import math

MIB_PER_GIB = 1024.0

_TOKENS = {
    "rss": "RSS", "anon": "anon", "file": "file-backed", "vmhwm": "VmHWM", "cuda": "CUDA", "gpu": "GPU",
    "max": "max", "peak": "peak", "reserved": "reserved", "allocated": "allocated", "used": "used",
    "latency": "latency", "time": "time", "total": "total", "weights": "weights",
}
_PHASES = {"load": "after loading", "gen": "generation", "call": "per call", "first": "first call"}
_UNITS = {"mib": "MiB", "gib": "GiB", "bytes": "bytes", "s": "s", "ms": "ms"}


def _split(name: str) -> tuple[list[str], str, list[str]]:
    """Words, unit and trailing qualifiers of a counter name (the phase prefix dropped)."""
    parts = name.split(".")
    if len(parts) > 1 and parts[0] in _PHASES:
        parts = parts[1:]
    words: list[str] = []
    unit = ""
    for i, part in enumerate(parts):
        tokens = part.split("_")
        if tokens[-1] in _UNITS:
            unit = _UNITS[tokens[-1]]
            words += tokens[:-1]
            return words, unit, parts[i + 1:]
        words += tokens
    return words, unit, []


def counter_label(name: str) -> str:
    """``load.rss_anon_mib`` → ``RSS anon``; ``gen.cuda_max_reserved_mib`` → ``CUDA max reserved``;
    ``call.latency_s.p50`` → ``latency p50``; ``gen.gpu_used_mib.nvml`` → ``GPU used (nvml)``."""
    words, _, extra = _split(name)
    label = " ".join(_TOKENS.get(w, w) for w in words if w)
    for item in extra:
        label += f" {item}" if item[:1] == "p" and item[1:].isdigit() else f" ({item})"
    return label


def counter_unit(name: str) -> str:
    """The unit a counter is stored in, read from its name's suffix ('' when it has none)."""
    _, unit, extra = _split(name)
    return "" if extra[-1:] == ["n"] else unit


def memory_unit(values_mib: list[float | None]) -> str:
    """GiB when the largest value is at least 1 GiB, else MiB: one unit per column."""
    finite = [v for v in values_mib if v is not None and math.isfinite(v)]
    return "GiB" if finite and max(finite) >= MIB_PER_GIB else "MiB"


def fmt_memory(value_mib: float | None, unit: str) -> str:
    if value_mib is None:
        return "—"
    if unit == "GiB":
        return f"{value_mib / MIB_PER_GIB:.3f} GiB"
    return f"{value_mib:.1f} MiB"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:.0f} s"
    if value >= 0.1:
        return f"{value:.2f} s"
    return f"{value * 1000:.1f} ms"


def fmt_ratio(value: float | None) -> str:
    """``0.50×``: this run's figure over the reference's."""
    return "-" if value is None else f"{value:.2f}×"


def fmt_ratio_ci(value: float | None, low: float | None, high: float | None) -> str:
    """``1.34× [1.30, 1.38]``; ``≈1.01× [0.97, 1.05]`` when the interval holds 1.0."""
    if value is None:
        return "-"
    if low is None or high is None:
        return fmt_ratio(value)
    mark = "≈" if low <= 1.0 <= high else ""
    return f"{mark}{value:.2f}× [{low:.2f}, {high:.2f}]"


# --- the text tables ---------------------------------------------------------------------------

def fmt_mib(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1024:.3f} GiB" if value >= 10 * 1024 else f"{value:.1f} MiB"


def fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f} s"
    return f"{value:.3g} s" if value >= 0.01 else f"{value * 1000:.3g} ms"


def format_bytes(n: float) -> str:
    """Bytes in GiB (MiB below one GiB), the units the seed's and diffquant's tables use."""
    if n == 0:
        return "0"
    if abs(n) >= 1024**3:
        return f"{n / 1024**3:.2f} GiB"
    return f"{n / 1024**2:.1f} MiB" if abs(n) < 100 * 1024**2 else f"{n / 1024**2:.0f} MiB"


# --- the HTML report and the grid ----------------------------------------------------------------

def report_ratio(value: float | None) -> str:
    """``×0.50`` after a figure in a report cell ('' when there is none)."""
    return "" if value is None else f"×{value:.2f}"



def _decimals(value: float) -> int | None:
    magnitude = abs(value)
    if magnitude == 0:
        return 3
    for limit, decimals in ((100, 1), (10, 2), (1, 3), (0.01, 4)):
        if magnitude >= limit:
            return decimals
    return None  # scientific notation


def _plain(value: float, decimals: int | None, signed: bool) -> str:
    if math.isinf(value):
        return ("+∞" if signed else "∞") if value > 0 else "−∞"
    sign = "+" if signed else ""
    if decimals is None:
        return f"{value:{sign}.2e}"
    return f"{value:{sign}.{decimals}f}"


def fmt_number(value: float | None, unit: str = "", *, signed: bool = False) -> str:
    """A metric value with its unit; ``inf`` shows as ∞ (PSNR of identical images)."""
    if value is None or math.isnan(value):
        return "—"
    text = _plain(value, _decimals(value) if math.isfinite(value) else 0, signed)
    return f"{text} {unit}".rstrip()


def format_estimate(mean: float | None, low: float | None, high: float | None, unit: str = "", *,
                    signed: bool = False) -> str:
    """``31.20 dB [30.81, 31.62]`` - the mean with its 95% confidence interval."""
    if mean is None or math.isnan(mean):
        return "—"
    decimals = _decimals(mean) if math.isfinite(mean) else 2
    text = f"{_plain(mean, decimals, signed)} {unit}".rstrip()
    if low is None or high is None or (low == high == mean) or math.isinf(mean):
        return text
    return f"{text} [{_plain(low, decimals, signed)}, {_plain(high, decimals, signed)}]"


METRIC_TITLES = {"psnr": "PSNR", "ssim": "SSIM", "ms-ssim": "MS-SSIM", "lpips": "LPIPS", "clip-score": "CLIP score",
                 "shapes-adherence": "Shapes adherence", "latent-rel-error": "Latent rel. error",
                 "shapes-shape": "Shape accuracy", "shapes-all-correct": "All attributes right"}


def metric_title(name: str) -> str:
    return METRIC_TITLES.get(name, name)


def ascii_inf(text: str) -> str:
    """For fonts without ∞ (the grid's): ``∞ dB`` → ``inf dB (identical)``."""
    return text.replace("+∞", "+inf").replace("−∞", "-inf").replace("∞", "inf") + (
        " (identical)" if "∞" in text else "")
