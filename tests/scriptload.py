"""Import a script or benchmark file (not part of the package) as a module, for the tests that
check its functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(path: Path | str) -> ModuleType:
    """The module at ``path`` (absolute, or relative to the repository), under its file's stem;
    registered in ``sys.modules`` first, because dataclasses look their module up while built."""
    path = Path(path) if Path(path).is_absolute() else REPO / path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(spec.name, None)  # as importlib does: no half-built module left behind
        raise
    return module
