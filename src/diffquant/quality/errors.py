"""The quality package's own exception: a metric that cannot score here (kept apart so that the
registry and the batch a metric sees can both raise it without importing each other)."""

from __future__ import annotations


class MetricUnavailable(Exception):
    """A metric cannot be computed here; ``str(exc)`` says why and what would make it work."""
