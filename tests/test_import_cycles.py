"""No import circle in cerssd/: the import graph, read from the source, has no cycle.

A circle hidden by an import inside a function (or under ``TYPE_CHECKING``) is still a
circle: the two modules cannot be read, tested or moved apart. So the graph counts every
import statement wherever it stands, module level or in a function, relative or
absolute; ``from . import x`` is an edge to the submodule ``x`` when ``x`` is one, and
to the package otherwise. An edge goes to the module named, not to its parent packages,
although Python runs their ``__init__`` files first. Most of those import nothing; two do
(``storage/zfs/`` and ``storage/btrfs/`` import their backend), so a circle that ran only
through one of them (a module the backend imports, importing a sibling of the backend)
would not be seen here.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cerssd"

#: module -> {imported module: line of the first import of it}
Graph = dict[str, dict[str, int]]


def module_names(root: Path) -> dict[str, Path]:
    """Every module under ``root`` (a package directory) by dotted name."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _imported(node: ast.Import | ast.ImportFrom, package: str,
              modules: Mapping[str, Path]) -> Iterator[str]:
    """The package's modules one import statement reads."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names if alias.name in modules)
        return
    if node.level:
        base = package.split(".")
        if node.level - 1 > len(base) - 1:
            return  # beyond the top-level package: not ours
        base = base[:len(base) - (node.level - 1)]
        source = ".".join([*base, *([node.module] if node.module else [])])
    else:
        source = node.module or ""
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        if submodule in modules:
            yield submodule
        elif source in modules:
            yield source


def import_graph(root: Path) -> Graph:
    """The import graph of the package at ``root``, from its source (nothing is run)."""
    modules = module_names(root)
    graph: Graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = graph.setdefault(name, {})
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _imported(node, package, modules):
                    edges.setdefault(target, node.lineno)
    return graph


def find_cycle(graph: Graph) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None. Depth-first and iterative, in name order,
    so the same cycle is reported on every run."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path = [start]
        pending = [iter(sorted(graph[start]))]
        while pending:
            target = next(pending[-1], None)
            if target is None:
                done.add(path.pop())
                pending.pop()
            elif target in path:
                return [*path[path.index(target):], target]
            elif target not in done:
                path.append(target)
                pending.append(iter(sorted(graph[target])))
    return None


def describe(cycle: list[str], graph: Graph, modules: Mapping[str, Path]) -> str:
    """Each edge of ``cycle`` with the file and line that makes it."""
    root = PACKAGE.parent
    return "\n".join(f"  {a} -> {b}  ({modules[a].relative_to(root)}:{graph[a][b]})"
                     for a, b in itertools.pairwise(cycle))


def test_cerssd_has_no_import_cycle() -> None:
    graph = import_graph(PACKAGE)
    cycle = find_cycle(graph)
    if cycle is not None:
        pytest.fail("import cycle in cerssd/: " + " -> ".join(cycle) + "\n"
                    + describe(cycle, graph, module_names(PACKAGE)), pytrace=False)


#: replication's layers, lowest first: a module may import its own layer and those before it.
REPLICATION_LAYERS = ("logic", "retry", "stream", "flows", "relationships")
#: What no flow or replication layer may import: the storage and transport implementations.
IMPLEMENTATIONS = ("cerssd.storage.zfs", "cerssd.storage.btrfs", "cerssd.transport.ssh",
                   "cerssd.transport.runner")


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 3 or parts[:2] != ["cerssd", "replication"]:
        return None
    return REPLICATION_LAYERS.index(parts[2]) if parts[2] in REPLICATION_LAYERS else None


def layering_violations(graph: Graph) -> list[str]:
    """Imports that reach up a layer, or from replication/ into an implementation."""
    found = []
    for module, edges in sorted(graph.items()):
        here = _layer(module)
        if here is None:
            continue
        for target in sorted(edges):
            there = _layer(target)
            if there is not None and there > here:
                found.append(f"{module} imports {target} (a higher layer)")
            if target.startswith(IMPLEMENTATIONS):
                found.append(f"{module} imports {target} (an implementation)")
    return found


def test_replication_imports_only_down_its_layers() -> None:
    assert layering_violations(import_graph(PACKAGE)) == []


def test_a_layer_reaching_up_is_reported(tmp_path: Path) -> None:
    graph: Graph = {"cerssd.replication.logic.plan": {"cerssd.replication.flows.replicate": 3},
                    "cerssd.replication.flows.replicate": {"cerssd.storage.zfs.backend": 9}}
    assert layering_violations(graph) == [
        "cerssd.replication.flows.replicate imports cerssd.storage.zfs.backend "
        "(an implementation)",
        "cerssd.replication.logic.plan imports cerssd.replication.flows.replicate "
        "(a higher layer)"]


def test_the_graph_is_the_whole_package() -> None:
    """A sanity check of the reader on the real tree: known edges of each kind are seen."""
    graph = import_graph(PACKAGE)
    assert "cerssd.daemon" in graph["cerssd.__main__"]  # from .daemon import main
    assert "cerssd.engine" in graph["cerssd.daemon"]
    assert len(graph) > 50


# -- the reader and the search, on small packages written for the purpose ---------------
def _package(tmp_path: Path, files: Mapping[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_function_level_relative_import_closes_a_cycle(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from .b import thing\n",
        "b.py": "def thing():\n    from . import a\n    return a\n",
    })
    graph = import_graph(root)
    assert graph["pkg.b"] == {"pkg.a": 2}  # `from . import a` is the submodule a
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]


def test_type_checking_and_absolute_imports_count(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "",
        "sub/__init__.py": "",
        "sub/x.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                    "    from ..y import Y\n",
        "y.py": "import pkg.sub.x\n",
    })
    graph = import_graph(root)
    assert graph["pkg.sub.x"] == {"pkg.y": 3}
    assert graph["pkg.y"] == {"pkg.sub.x": 1}
    assert find_cycle(graph) == ["pkg.sub.x", "pkg.y", "pkg.sub.x"]


def test_a_name_from_a_package_is_an_edge_to_the_package(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "VALUE = 1\n",
        "a.py": "from . import VALUE\nfrom .b import c\nimport json\n",
        "b/__init__.py": "",
        "b/c.py": "from .. import a\n",
    })
    graph = import_graph(root)
    assert graph["pkg.a"] == {"pkg": 1, "pkg.b.c": 2}
    assert find_cycle(graph) == ["pkg.a", "pkg.b.c", "pkg.a"]


def test_a_tree_without_cycles_passes(tmp_path: Path) -> None:
    root = _package(tmp_path, {
        "__init__.py": "", "a.py": "from . import b, c\n", "b.py": "from .c import x\n",
        "c.py": "x = 1\n"})
    graph = import_graph(root)
    assert graph["pkg.a"] == {"pkg.b": 1, "pkg.c": 1}
    assert find_cycle(graph) is None
