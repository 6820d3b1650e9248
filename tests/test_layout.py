"""The layout rules of the code, checked from the source (nothing is imported or run).

- ``scripts/`` holds command-line entry points only: each has a ``main()`` and a
  ``__main__`` guard, no script imports another, and no package imports ``scripts``
  (shared code lives in packages: ``devstack/`` for the harness, ``experiments/``, ...).
  Tests may import a script to run its ``main()`` or check its own logic.
- The import graph between modules has no circle (imports inside functions count).
"""

from __future__ import annotations

import ast
from pathlib import Path

from common.settings import PROJECT_ROOT

SKIP = {".venv", ".local", ".git", "tests"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PROJECT_ROOT.rglob("*.py"):
        rel = path.relative_to(PROJECT_ROOT)
        if rel.parts[0] in SKIP or rel.parts[0].startswith("."):
            continue
        name = ".".join(rel.with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules ``path`` imports (``from a import b`` counts ``a.b`` if a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n for n in names if n in modules)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def test_scripts_are_entry_points_only() -> None:
    graph = _graph()
    scripts = [m for m in graph if m.startswith("scripts.")]
    assert scripts
    for module in scripts:
        tree = ast.parse(_modules()[module].read_text(encoding="utf-8"))
        functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "main" in functions, f"{module} has no main()"
        assert "__main__" in ast.unparse(tree), f"{module} has no __main__ guard"
    importing_scripts = {m: sorted(i for i in imports if i.split(".")[0] == "scripts")
                         for m, imports in graph.items()}
    offenders = {m: i for m, i in importing_scripts.items() if i}
    assert offenders == {}, "move what is shared into a package (devstack/, experiments/)"


def test_the_import_graph_has_no_circle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []
