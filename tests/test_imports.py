"""The package's shape: imports run one way (no module imports, directly or through others, a module that imports it
back), and every dotted ``archsearch.…`` name the docstrings, the README and the docs mention exists."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "archsearch"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The archsearch modules ``path`` imports, at any depth of its code (a function's import is still an arrow)."""
    name, out = _module_name(path), set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in modules and t != name}
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    # a package's __init__ re-exports its modules: importing the package is not an arrow into each of them
    return {name: {t for t in _imports(path, modules) if not name.startswith(t + ".")} for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle among the modules (not counting a package's face, __init__, re-exporting its own modules)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if graph.get(nxt) is None:
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if state.get(nxt) is None and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None and (found := visit(node)):
            return found
    return None


def test_no_module_imports_its_way_back_to_itself() -> None:
    graph = _graph()
    faces = {name for name in graph if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()}
    # a module importing a package's face (archsearch.models) depends on the modules it re-exports
    modules_only = {
        name: {t for t in targets if t not in faces} | {m for t in targets if t in faces for m in graph[t]}
        for name, targets in graph.items()
        if name not in faces
    }
    assert _cycle(modules_only) is None, " -> ".join(_cycle(modules_only) or [])


DOTTED = re.compile(r"\barchsearch(?:\.[A-Za-z_]\w*)+")
FILE_SUFFIXES = {"db", "toml", "json", "md", "py", "txt", "png", "log"}  # archsearch.db is a file, not a module


def _docstrings(path: Path) -> str:
    tree = ast.parse(path.read_text())
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef))]
    return "\n".join(doc for n in nodes if (doc := ast.get_docstring(n)))


def _texts() -> dict[str, str]:
    out = {str(p.relative_to(ROOT)): _docstrings(p) for p in PACKAGE.rglob("*.py")}
    for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        if p.exists():
            out[str(p.relative_to(ROOT))] = p.read_text()
    return out


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_dotted_name_in_docstrings_the_readme_and_the_docs_exists() -> None:
    missing = sorted(
        {
            f"{where}: {name}"
            for where, text in _texts().items()
            for name in DOTTED.findall(text)
            if name.rpartition(".")[2] not in FILE_SUFFIXES and not _resolves(name)
        }
    )
    assert not missing, "\n".join(missing)
