"""The package as a whole: every module's doctests run, its imports form no circle, the result types
and the store load without torch, and the engine never imports streamlit."""

from __future__ import annotations

import ast
import doctest
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import pai_core

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "pai_core"
MODULES = sorted(m.name for m in pkgutil.walk_packages(pai_core.__path__, "pai_core."))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> set[str]:
    """Every module a file imports when it runs: top-level and inside functions, not typing-only."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:  # the `else` branch of TYPE_CHECKING does run
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from . import x` imports module x
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return out


def test_the_import_walk_sees_what_it_must():
    g = _graph()
    assert "pai_core.results" in g["pai_core.store"] and "pai_core.results" in g["pai_core.experiment"]
    assert "pai_core.scores.kfac" in g["pai_core.scores"]  # `from . import kfac`
    assert "pai_core.scores" in g["pai_core.results"]  # imported inside a function: counted
    assert "pai_core.results" not in g["pai_core.scores._base"]  # typing-only: not counted
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_pai_core_imports_form_no_circle():
    assert _cycles(_graph()) == []


def test_pai_core_never_imports_streamlit():
    users = [p for p in PKG.rglob("*.py") if any(m.split(".")[0] == "streamlit" for m in _imports(p))]
    assert users == []


def test_results_store_cache_and_runtime_load_without_torch():
    code = (
        "import sys, pai_core.results, pai_core.store, pai_core.cache, pai_core.runtime; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    """Every module's examples run (those that need a model hub or a data folder say +SKIP)."""
    result = doctest.testmod(
        importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
