"""Kept for the names importers know: the formatting lives in :mod:`diffquant.figures`."""

from diffquant.figures import (
    METRIC_TITLES,
    MIB_PER_GIB,
    ascii_inf,
    counter_label,
    counter_unit,
    fmt_memory,
    fmt_number,
    fmt_seconds,
    format_estimate,
    memory_unit,
    metric_title,
)
from diffquant.figures import report_ratio as fmt_ratio  # this module's fmt_ratio was the report's

__all__ = ["METRIC_TITLES", "MIB_PER_GIB", "ascii_inf", "counter_label", "counter_unit", "fmt_memory", "fmt_number",
           "fmt_ratio", "fmt_seconds", "format_estimate", "memory_unit", "metric_title"]
