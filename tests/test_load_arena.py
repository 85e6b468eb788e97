"""``file_pages.in_own_arena``: the loader runs in a short-lived thread (its own glibc malloc
arena) and behaves like a plain call: same result, exceptions re-raised, grad mode carried over."""

from __future__ import annotations

import threading

import pytest

from diffquant.errors import DiffquantError
from diffquant.file_pages import in_own_arena


def test_returns_the_result_from_another_thread() -> None:
    seen: list[str] = []

    def load(a: int, *, b: int) -> int:
        seen.append(threading.current_thread().name)
        return a + b

    assert in_own_arena(load, 2, b=3) == 5
    assert seen == ["diffquant-load"]  # negative control: a plain call would say MainThread


def test_reraises_the_loaders_error() -> None:
    def load() -> None:
        raise DiffquantError("no such model", hint="check the name")

    with pytest.raises(DiffquantError, match="no such model"):
        in_own_arena(load)


def test_carries_grad_mode() -> None:
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        assert in_own_arena(torch.is_grad_enabled) is False
    assert in_own_arena(torch.is_grad_enabled) is True
