"""Every catalogue backend is one module that answers every question about it
(``diffquant.backends.base.BackendModule``), and generic code asks it instead of testing its name."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from diffquant.backends import get_backend, register_backend, unregister_backend
from diffquant.backends.base import BackendModule, MemoryTraits, interface
from diffquant.errors import DiffquantError
from diffquant.recipes.catalog import BACKENDS, BackendDef, TypeDef

SRC = Path(__file__).resolve().parents[1] / "src" / "diffquant"


def contract_problems(module: Any, name: str) -> list[str]:
    """What ``module`` lacks or gets wrong of the backend interface (empty: it provides it all)."""
    problems = []
    for member in interface():
        if not hasattr(module, member):
            problems.append(f"missing {member}")
            continue
        wanted = getattr(BackendModule, member, None)
        if callable(wanted):
            got = getattr(module, member)
            if not callable(got):
                problems.append(f"{member} is not callable")
                continue
            params = list(inspect.signature(wanted).parameters)[1:]  # without self
            try:
                have = inspect.signature(got).parameters.values()
            except (TypeError, ValueError):
                continue
            if not any(p.kind is p.VAR_POSITIONAL for p in have) and len(list(have)) != len(params):
                problems.append(f"{member} takes {len(list(have))} arguments, not {len(params)} ({params})")
    if not problems:
        if module.name != name:
            problems.append(f"name is {module.name!r}, not {name!r}")
        if not (isinstance(module.packages, tuple) and all(isinstance(p, str) for p in module.packages)):
            problems.append("packages is not a tuple of distribution names")
        if not isinstance(module.memory, MemoryTraits):
            problems.append("memory is not a MemoryTraits")
        if not (isinstance(module.formats, dict) and all(isinstance(v, str) and v for v in module.formats.values())):
            problems.append("formats is not a dict of format -> files in words")
        if not isinstance(module.cache_quantized, bool):
            problems.append("cache_quantized is not a bool")
    return problems


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_catalogue_backend_provides_the_interface(name: str) -> None:
    module = get_backend(name)
    assert contract_problems(module, name) == []
    assert isinstance(module, BackendModule)
    # the types its module knows are the catalogue's (a module may define fewer helpers, never other types)
    assert all(isinstance(t, TypeDef) for t in BACKENDS[name].types.values())


def test_the_contract_check_can_fail() -> None:
    complete = SimpleNamespace(**{m: getattr(get_backend("layerwise"), m) for m in interface()})
    assert contract_problems(complete, "layerwise") == []
    for member in ("save", "stored_bytes", "packages", "disk_offload_breaks"):
        broken = SimpleNamespace(**{m: getattr(complete, m) for m in interface() if m != member})
        assert contract_problems(broken, "layerwise") == [f"missing {member}"]
    wrong = SimpleNamespace(**{**vars(complete), "notes": lambda spec: []})
    assert any(p.startswith("notes takes 1") for p in contract_problems(wrong, "layerwise"))
    assert contract_problems(SimpleNamespace(**{**vars(complete), "name": "x"}), "layerwise") == [
        "name is 'x', not 'layerwise'"]


def test_interface_lists_every_question() -> None:
    members = set(interface())
    for question in ("why_not_here", "notes", "disk_offload_breaks", "compile_breaks", "load_config",
                     "load_component", "cached_file", "before_load", "after_load", "save", "load_saved",
                     "plain_load", "stored_bytes", "quantize_linear", "keeps_precise", "keep_precise",
                     "upgrade_type", "evaluation_copy", "packages", "cache_quantized", "memory", "formats", "name"):
        assert question in members


def test_unknown_backend_names_get_suggestions() -> None:
    with pytest.raises(DiffquantError, match=r"Unknown backend 'torchaoo'[\s\S]*Did you mean: 'torchao'"):
        get_backend("torchaoo")
    with pytest.raises(DiffquantError, match="Valid choices: .*bnb"):
        get_backend("nothing-like-it")


def test_register_refuses_a_taken_name_and_unregisters() -> None:
    entry = BackendDef("bnb", "again", "torch", "core", {"x": TypeDef("x", "x", 8.0)})
    with pytest.raises(DiffquantError, match="already registered"):
        register_backend(entry, SimpleNamespace())
    with pytest.raises(DiffquantError, match="needs a module"):
        register_backend(BackendDef("nomodule", "n", "torch", "core", {}))
    assert "nomodule" not in BACKENDS
    register_backend(BackendDef("contract-probe", "p", "torch", "core", {}), SimpleNamespace(name="contract-probe"))
    try:
        assert get_backend("contract-probe").name == "contract-probe"
    finally:
        unregister_backend("contract-probe")
    assert "contract-probe" not in BACKENDS


# --- generic code asks; it never tests a backend's name --------------------------------------------

GENERIC = ["pipeline.py", "serialize.py", "versions.py", "components.py", "memory.py", "bench", "plan", "export",
           "recipes/validate.py", "sensitivity"]
# The card of `diffquant export gguf` describes a GGUF file (the format itself, like gguf_writer/).
NOT_GENERIC = {"export/gguf_card.py"}


def _generic_files() -> list[Path]:
    files = []
    for item in GENERIC:
        path = SRC / item
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return [f for f in files if str(f.relative_to(SRC)) not in NOT_GENERIC]


def name_tests(source: str) -> list[str]:
    """Backend names written as a string of their own, and comparisons of a ``.backend`` with a literal."""
    names = set(BACKENDS) | {"layerwise", "fp8"}
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and node.value in names:
            found.append(f"line {node.lineno}: {node.value!r}")
        if isinstance(node, ast.Compare) and any(isinstance(o, ast.Constant) and isinstance(o.value, str)
                                                 for o in node.comparators):
            text = ast.unparse(node.left)
            if re.search(r"\bbackend\b", text):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_generic_code_never_tests_a_backend_name() -> None:
    found = {str(f.relative_to(SRC)): hits for f in _generic_files() if (hits := name_tests(f.read_text()))}
    assert found == {}


def test_the_name_scan_can_fail() -> None:
    assert name_tests('if spec.backend == "gguf":\n    pass\n')
    assert name_tests('CACHED = ("torchao", "quanto")\n')
    assert name_tests('if c.backend == "sdnq":\n    pass\n')
    assert not name_tests('RECIPES = ("bnb-nf4", "gguf-q4_k")\n')


# --- pipeline.py and serialize.py do not import each other ------------------------------------------

def imported_modules(path: Path) -> set[str]:
    """diffquant modules a file imports, at the top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("diffquant"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("diffquant")}
    return out


def test_pipeline_and_serialize_do_not_import_each_other() -> None:
    assert "diffquant.serialize" in imported_modules(SRC / "pipeline.py")  # pipeline saves the quant cache
    for path in ("serialize.py", "load_record.py", "settings.py", "export/files.py", "export/formats.py"):
        assert not {m for m in imported_modules(SRC / path) if m.startswith("diffquant.pipeline")}, path
