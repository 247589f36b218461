"""No import cycles in bridge/: the modules form a layered graph, read from the source with ``ast``.

Every import counts: at module level, under ``if TYPE_CHECKING:`` (a cycle hidden there is still
two modules that each need the other) and inside functions (a lazy import defers loading, for
start-up cost or gevent's patch order, not the dependency). An edge goes to the module an import
names: ``from bridge.store import sqlite`` -> bridge.store.sqlite, ``from bridge.store import
Store`` -> bridge.store. Python also runs a package's ``__init__`` before any of its modules; that
implicit edge is not counted (a package that re-exports its modules would otherwise always be a
cycle).
"""

from __future__ import annotations

import ast
import pathlib

BRIDGE = pathlib.Path(__file__).resolve().parent.parent / "bridge"


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for path in sorted(BRIDGE.rglob("*.py")):
        parts = path.relative_to(BRIDGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Each bridge module -> the bridge modules it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, one level up per extra dot
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # `import bridge.x.y` names bridge.x.y; a.b.C -> a.b
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None. Depth-first search, iterative."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path = [root]
        pending = [iter(sorted(graph[root]))]
        state[root] = 1
        while pending:
            child = next(pending[-1], None)
            if child is None:
                state[path.pop()] = 2
                pending.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = 1
                path.append(child)
                pending.append(iter(sorted(graph[child])))
    return None


def test_bridge_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle in bridge/: " + " -> ".join(cycle)


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "bridge.store.sqlite" in graph["bridge.store"]  # from bridge.store.sqlite import ...
    assert "bridge.response_head" in graph["bridge.patches"]  # inside a function
    assert "bridge.gateway" in graph["bridge.worker"]  # under TYPE_CHECKING
    assert "bridge.auth" in graph["bridge.gunicorn_conf"]  # a lazy import in a gunicorn hook


def test_a_cycle_is_named():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
