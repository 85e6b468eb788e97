"""No import cycles between the modules of src/diffquant.

Every `import` / `from ... import` statement counts, at module level and inside functions alike: a lazy
import that closes a loop is still a loop (it only moves the failure from import time to call time, and
it ties the two modules together all the same). `from pkg import name` is an edge to `pkg/__init__.py`
(that is the file Python runs), plus an edge to `pkg/name.py` when `name` is a submodule.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `package` under `root`."""
    files: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def _absolute(module: str, is_package: bool, level: int, target: str | None) -> str:
    """Resolve a relative `from` target against the importing module."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that `module` imports anywhere in its file (any depth of nesting)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    edges: set[str] = set()

    def add(name: str) -> None:
        if name in known:
            edges.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, is_package, node.level, node.module)
            for alias in node.names:
                # `from pkg import submodule` needs the submodule; `from pkg import name` needs the
                # file that defines or re-exports the name: pkg/__init__.py.
                sub = f"{target}.{alias.name}"
                add(sub if sub in known else target)
    edges.discard(module)
    return edges


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    files = module_files(root, package)
    known = set(files)
    graph = {name: imported_modules(name, path, known) for name, path in files.items()}
    # Python runs a package's __init__ before any of its submodules (importing `a.b.c` imports `a` and
    # `a.b` first). Those implicit parent edges are left out: with them every package whose __init__
    # re-exports a submodule would be "a cycle" with it. The statements written in the code are what
    # this test polices.
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); components of more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def describe(graph: dict[str, set[str]], component: list[str]) -> str:
    members = set(component)
    lines = [f"cycle of {len(component)} modules:"]
    for name in component:
        for target in sorted(graph[name] & members):
            lines.append(f"  {name} -> {target}")
    return "\n".join(lines)


def cycles(root: Path, package: str) -> list[str]:
    graph = import_graph(root, package)
    return [describe(graph, component) for component in strongly_connected(graph)]


def test_no_import_cycles_in_diffquant() -> None:
    found = cycles(SRC, "diffquant")
    assert not found, "import cycles in src/diffquant:\n" + "\n".join(found)


def test_checker_sees_every_kind_of_edge() -> None:
    graph = import_graph(SRC, "diffquant")
    assert len(graph) > 100  # it read the tree, not an empty folder
    assert "diffquant.errors" in graph["diffquant.recipes.parse"]  # a module-level edge it must see
    assert "diffquant.bench.executor_ray" in graph["diffquant.bench.executors"]  # one inside a function
    assert "diffquant.store" in graph["diffquant.bench.jobs"]  # `from diffquant.store import` -> store/__init__


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_negative_control_lazy_cycle_through_package_reexport(tmp_path: Path) -> None:
    # a -> pkg (its __init__ re-exports from pkg.inner) -> pkg.inner -> a, the last edge only inside a
    # function and relative: the checker must still close the loop.
    _write(tmp_path, {
        "toy/__init__.py": "",
        "toy/a.py": "from toy.pkg import thing\n",
        "toy/pkg/__init__.py": "from .inner import thing\n",
        "toy/pkg/inner.py": "def thing():\n    from ..a import x\n    return x\n",
        "toy/b.py": "import toy.a\n",  # depends on the loop, not part of it
    })
    found = strongly_connected(import_graph(tmp_path, "toy"))
    assert found == [["toy.a", "toy.pkg", "toy.pkg.inner"]]


def test_negative_control_plain_two_module_cycle(tmp_path: Path) -> None:
    _write(tmp_path, {"toy/__init__.py": "", "toy/x.py": "from . import y\n", "toy/y.py": "import toy.x\n"})
    found = cycles(tmp_path, "toy")
    assert len(found) == 1 and "toy.x -> toy.y" in found[0] and "toy.y -> toy.x" in found[0]


def test_acyclic_package_passes(tmp_path: Path) -> None:
    _write(tmp_path, {"toy/__init__.py": "from .x import f\n", "toy/x.py": "from . import y\n", "toy/y.py": ""})
    assert cycles(tmp_path, "toy") == []
