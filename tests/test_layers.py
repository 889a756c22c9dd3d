"""The import graph of ssmprune: data flows one way and nothing imports the CLI.

Every import counts, the lazy ones inside functions too: a lazy import that
climbs a layer still ties the lower module to the upper one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

import ssmprune

ROOT = Path(ssmprune.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The ssmprune modules ``path`` imports (``from pkg import mod`` resolved to the module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name.startswith("ssmprune"):
                out.add(name)
    return out


def _graph() -> nx.DiGraph:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = nx.DiGraph()
    for name, path in files.items():
        graph.add_node(name)
        for target in _imports(path, set(files)) - {name}:
            # A package's __init__ re-exporting its modules is not a dependency of theirs.
            if not target.startswith(name + "."):
                graph.add_edge(name, target)
    return graph


def test_no_import_circles():
    cycles = [c for c in nx.simple_cycles(_graph()) if len(c) > 1]
    assert not cycles, f"import circles: {cycles[:5]}"


def test_nothing_below_the_cli_imports_it():
    graph = _graph()
    climbing = [(a, b) for a, b in graph.edges
                if b.startswith("ssmprune.cli") and not a.startswith("ssmprune.cli")
                and a != "ssmprune.__main__"]
    assert not climbing


def test_model_construction_lives_in_models():
    graph = _graph()
    assert "ssmprune.predict" not in nx.descendants(graph, "ssmprune.exporter.export")
