"""vidssl's import graph, read from the source (every import, those inside functions too): no module reaches
itself through its imports, and no package imports one on a higher floor of `LAYERS`."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vidssl"

# Floors, lowest first: a module may import its own floor and those below it, never above.
LAYERS = (
    ("vidssl.files", "vidssl.color", "vidssl.distributed", "vidssl.configs"),  # configs: CONFIG_DIR, then YAML
    ("vidssl.losses", "vidssl.monitors"),
    ("vidssl.datasets", "vidssl.encoders"),
    ("vidssl.viz", "vidssl.tasks"),
    ("vidssl.run",),
    ("vidssl.convert", "vidssl.train", "vidssl.eval"),
    ("vidssl.benchmarks",),
    ("vidssl.app",),
)


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """{module: the vidssl modules it imports}; ``from package import name`` counts as the package's module
    ``package.name`` when that is a module, else as the package."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("vidssl"):
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names if alias.name.startswith("vidssl")]
            else:
                continue
            targets |= {t for t in map(resolve, names) if t is not None and t != module}
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def floor(module: str) -> int | None:
    for i, packages in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in packages):
            return i
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_vidssl_has_no_import_cycle():
    graph = import_graph()
    assert "vidssl.datasets.formats" in graph and graph["vidssl.train.trainer"]  # the walk sees the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_has_a_floor_and_imports_nothing_above_it():
    graph = import_graph()
    unplaced = sorted(m for m in graph if m != "vidssl" and floor(m) is None)
    assert not unplaced, f"modules on no floor of LAYERS (the package root holds only shared low-level ones): {unplaced}"
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() if a != "vidssl" for b in targets
                    if b != "vidssl" and floor(b) > floor(a))
    assert not upward, "upward imports:\n" + "\n".join(upward)
