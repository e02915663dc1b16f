"""The import graph of loadgen: no cycle, no arrow from a lower layer to a higher one.

Every ``import`` and ``from … import`` of every module is read with ``ast``,
including imports inside functions (which hide cycles from Python at import
time but not from a reader). Modules are grouped into layers; a module may
import from its own layer or any layer below, never above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "loadgen"

#: Layers from the ground up; a module belongs to the first prefix it matches.
LAYERS: list[tuple[str, ...]] = [
    ("loadgen.clock", "loadgen.paths", "loadgen.headers", "loadgen.watchdog", "loadgen.procs", "loadgen.config"),
    ("loadgen.rundir",),
    ("loadgen.workload", "loadgen.client", "loadgen.sim", "loadgen.collector", "loadgen.scrape", "loadgen.localray"),
    ("loadgen.analysis", "loadgen.schedule", "loadgen.target"),
    ("loadgen.worker", "loadgen.progress", "loadgen.report"),
    ("loadgen.cluster", "loadgen.search"),
    ("loadgen.runner", "loadgen.twin"),
    ("loadgen.cli",),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every loadgen module ``path`` imports, at module level or inside functions."""
    name = module_name(path)
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            # `from loadgen.x import y` may import the submodule loadgen.x.y
            out.update(f"{mod}.{a.name}" for a in node.names)
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in out if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    if module == "loadgen":
        return 0
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {__file__}")


def package_of(module: str) -> str:
    """The top-level unit a module belongs to (``loadgen.analysis.level`` → ``loadgen.analysis``)."""
    return ".".join(module.split(".")[:2])


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    """One cycle in a directed graph as a list of nodes, or [] when there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str]:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return []

    for n in sorted(edges):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return []


def test_every_module_has_a_layer():
    for module in graph():
        layer_of(module)


def test_no_import_runs_up_the_layers():
    upward = [
        f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
        for a, targets in graph().items()
        for b in targets
        if layer_of(b) > layer_of(a) and b != "loadgen"
    ]
    assert not upward, "\n".join(upward)


def test_no_cycle_between_packages():
    edges: dict[str, set[str]] = {}
    for a, targets in graph().items():
        for b in targets:
            pa, pb = package_of(a), package_of(b)
            if pa != pb and pb != "loadgen":
                edges.setdefault(pa, set()).add(pb)
    assert find_cycle(edges) == [], f"import cycle: {' -> '.join(find_cycle(edges))}"


def test_no_cycle_between_modules():
    # A module importing its package's face (``from loadgen.workload import …`` inside
    # loadgen/workload/) closes a cycle: the face imports the package's modules.
    edges = {a: {b for b in targets if b != "loadgen"} for a, targets in graph().items()}
    cycle = find_cycle(edges)
    assert cycle == [], f"import cycle: {' -> '.join(cycle)}"


@pytest.mark.parametrize(
    "edges, cyclic",
    [({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True), ({"a": {"b"}, "b": {"c"}, "c": set()}, False)],
)
def test_the_cycle_finder_finds_cycles(edges, cyclic):
    assert bool(find_cycle(edges)) is cyclic
