"""User-facing errors: one exception type whose message tells people what to do.

The CLI prints a ``DiffquantError`` without a traceback and exits non-zero; any other exception
is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DiffquantError(Exception):
    """An error caused by the user's input or environment, with a message meant for people."""

    def __init__(self, what: str, *, choices: Iterable[str] | None = None, given: str | None = None,
                 hint: str | None = None) -> None:
        self.what = what
        self.choices = sorted(set(choices)) if choices is not None else None
        self.given = given
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        lines = [self.what]
        if self.choices is not None:
            if self.given is not None:
                close = difflib.get_close_matches(self.given, self.choices, n=3, cutoff=0.5)
                if close:
                    lines.append(f"Did you mean: {', '.join(repr(c) for c in close)}?")
            lines.append(f"Valid choices: {', '.join(self.choices)}")
        if self.hint:
            lines.append(f"What to do: {self.hint}")
        return "\n".join(lines)


class BackendUnavailable(DiffquantError):
    """A backend package is missing, or the backend cannot run on this device."""


def unknown_choice(kind: str, given: str, choices: Iterable[str], hint: str | None = None) -> DiffquantError:
    """The standard 'unknown X' error, with close-match suggestions."""
    return DiffquantError(f"Unknown {kind} {given!r}.", choices=choices, given=given, hint=hint)
