"""Memory budgets as people write them: "16GB", "16 GiB", "16gb", "1.5e10", "900MiB"."""

from __future__ import annotations

import re

from diffquant.errors import DiffquantError

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_budget(text: str) -> int:
    """Bytes in a budget: a number with an optional unit (GB = 10^9 bytes, GiB = 2^30; a bare number
    is bytes)."""
    match = _PATTERN.match(str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise DiffquantError(f"Cannot read the memory budget {text!r}.",
                             hint="write a number with a unit, e.g. --budget 16GB, 16GiB, 24gb, 900MiB "
                                  "or 1.5e10 (bytes); GB = 10^9 bytes, GiB = 2^30")
    value = float(match.group(1)) * _UNITS[unit]
    if value <= 0:
        raise DiffquantError(f"The memory budget {text!r} is not positive.", hint="e.g. --budget 16GB")
    return int(value)


def format_bytes(n: float) -> str:
    """Bytes in GiB (MiB below one GiB), the units the seed's and diffquant's tables use."""
    if n == 0:
        return "0"
    if abs(n) >= 1024**3:
        return f"{n / 1024**3:.2f} GiB"
    return f"{n / 1024**2:.1f} MiB" if abs(n) < 100 * 1024**2 else f"{n / 1024**2:.0f} MiB"
