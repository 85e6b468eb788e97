"""Memory budgets as people write them: "16GB", "16 GiB", "16gb", "1.5e10", "900MiB"."""

from __future__ import annotations

from diffquant.figures import format_bytes  # re-exported: plan's callers import it from here

__all__ = ["format_bytes", "parse_budget"]


def parse_budget(text: str) -> int:
    """Bytes in a budget; one parser for every command (:func:`diffquant.arguments.parse_budget`:
    GB, G and GiB all mean 2^30 bytes, as GPU memory and the seed's tables quote it)."""
    from diffquant.arguments import parse_budget as parse

    return parse(text)
