"""Refusals of the arena: a :class:`DiffquantError` with the HTTP status the API answers with."""

from __future__ import annotations

from diffquant.errors import DiffquantError


class ArenaRefused(DiffquantError):
    """A request the arena turns down; nothing was written. ``status`` is the HTTP status."""

    def __init__(self, what: str, status: int, *, hint: str | None = None) -> None:
        super().__init__(what, hint=hint)
        self.status = status
