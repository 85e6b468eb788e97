"""Memory budgets as people write them: "16GB", "16 GiB", "16gb", "1.5e10", "900MiB"."""

from __future__ import annotations


def parse_budget(text: str) -> int:
    """Bytes in a budget; one parser for every command (:func:`diffquant.arguments.parse_budget`:
    GB, G and GiB all mean 2^30 bytes, as GPU memory and the seed's tables quote it)."""
    from diffquant.arguments import parse_budget as parse

    return parse(text)


def format_bytes(n: float) -> str:
    """Bytes in GiB (MiB below one GiB), the units the seed's and diffquant's tables use."""
    if n == 0:
        return "0"
    if abs(n) >= 1024**3:
        return f"{n / 1024**3:.2f} GiB"
    return f"{n / 1024**2:.1f} MiB" if abs(n) < 100 * 1024**2 else f"{n / 1024**2:.0f} MiB"
