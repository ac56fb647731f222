"""The layers of pushapp/ import one way, and no module imports itself back through others.

Every module under pushapp/ is parsed (not imported) and each of its imports of pushapp,
``if TYPE_CHECKING:`` ones included, is checked against ``MAY_IMPORT``: the one table of
the allowed directions, which the packages' docstrings and the README repeat. A message
goes one way through them: in by an event (sockets), a channel (ingest) or a request
(http), into the store, out by delivery (sockets) over the wire.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pushapp"

# Layer -> the other layers its modules may import. A module may always import its own
# layer and BASE (modules that import nothing of pushapp but BASE themselves).
MAY_IMPORT: dict[str, set[str]] = {
    "entry": {"http", "ingest", "sockets", "wire", "store", "ops"},  # app, cli, drain, …
    "http": {"ingest", "wire", "store", "ops"},  # the API publishes through ingest's Router
    "ingest": {"sockets", "store"},  # stores, then hands over to sockets' delivery
    "sockets": {"wire", "store"},
    "ops": {"store"},  # the backlog counter reads the store
    "wire": set(),  # knows nothing of chat, users, Redis or the store
    "store": set(),  # the only way to Redis; nothing of ours above it
    "base": set(),
}
# Leaves every layer may import: settings, kinds, input checks, the ticker, the fence
# around the libraries' internals, and the counters and log format.
BASE = {"pushapp.config", "pushapp.kinds", "pushapp.payloads", "pushapp.ticker",
        "pushapp.internals", "pushapp.internals.socketio_engineio",
        "pushapp.internals.gevent_websocket", "pushapp.internals.redis_parsers",
        "pushapp.internals.prometheus_histograms",
        "pushapp.ops.metrics", "pushapp.ops.logs"}
FOLDERS = {"http", "ingest", "sockets", "ops", "wire", "store"}


def layer_of(module: str) -> str:
    """``pushapp.wire.frames`` -> ``wire``; BASE -> ``base``; pushapp's own top -> entry."""
    if module in BASE:
        return "base"
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in FOLDERS:
        return parts[1]
    return "entry"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """The modules of pushapp that ``name`` imports, with the line of each import."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names
                      if alias.name.split(".")[0] == "pushapp"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "pushapp":
                source = node.module
            else:
                continue
            for alias in node.names:
                # ``from . import x`` and ``from .pkg import x`` name a module when x is one.
                sub = f"{source}.{alias.name}"
                found.append((sub if sub in known else source, node.lineno))
    return sorted(set(found), key=lambda edge: (edge[1], edge[0]))


def graph(found: dict[str, Path]) -> dict[str, list[tuple[str, int]]]:
    known = set(found)
    return {name: [(target, line) for target, line in imports(name, path, known)
                   if target in known and target != name]
            for name, path in found.items()}


def wrong_way(edges: dict[str, list[tuple[str, int]]]) -> list[str]:
    """Each import that goes against MAY_IMPORT, as ``module:line imports target``."""
    problems = []
    for name, targets in edges.items():
        source_layer = layer_of(name)
        for target, line in targets:
            target_layer = layer_of(target)
            if target_layer in (source_layer, "base"):
                continue
            if target_layer not in MAY_IMPORT[source_layer]:
                problems.append(f"{name}:{line} imports {target}: layer {source_layer!r} "
                                f"may not import {target_layer!r}")
    return problems


def cycles(edges: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Every import cycle between modules (one per strongly connected group), as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target, _ in edges.get(node, []):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_every_layer_is_found() -> None:
    """The checker sees the package as it is: every folder, and modules in each."""
    layers = {layer_of(name) for name in modules()}
    assert layers == set(MAY_IMPORT), f"layers found: {sorted(layers)}"
    assert all(module in modules() for module in BASE), "a BASE module is missing"
    edges = graph(modules())
    assert sum(map(len, edges.values())) > 100, "too few imports found: the parser is off"


def test_imports_go_one_way() -> None:
    problems = wrong_way(graph(modules()))
    assert not problems, "imports against the layers (tests/test_layers.py MAY_IMPORT):\n" + \
        "\n".join(problems)


def test_no_import_cycles() -> None:
    found = cycles(graph(modules()))
    assert not found, "import cycles between modules:\n" + "\n".join(
        " -> ".join(group) for group in found)


def test_base_imports_only_base() -> None:
    edges = graph(modules())
    problems = [f"{name}:{line} imports {target}" for name in BASE
                for target, line in edges[name] if target not in BASE]
    assert not problems, "a BASE module imports above it:\n" + "\n".join(problems)


def test_the_store_counts_and_logs_nothing_of_ours() -> None:
    """The store answers or raises; counting and logging what it answers is its callers'
    business, so it stays below ops as well."""
    edges = graph(modules())
    problems = [f"{name}:{line} imports {target}" for name, targets in edges.items()
                if layer_of(name) == "store"
                for target, line in targets if target.startswith("pushapp.ops.")]
    assert not problems, "the store imports ops:\n" + "\n".join(problems)


@pytest.mark.parametrize("source, target", [
    ("pushapp.store.store", "pushapp.sockets.delivery"),  # store above its callers
    ("pushapp.wire.transport", "pushapp.sockets.events"),  # wire knowing the chat
    ("pushapp.sockets.delivery", "pushapp.ingest.routing"),  # delivery calling back in
])
def test_the_checker_fails_a_wrong_edge(source: str, target: str) -> None:
    edges = {source: [(target, 1)], target: []}
    problems = wrong_way(edges)
    assert problems and f"{source}:1 imports {target}" in problems[0]


def test_the_checker_finds_a_cycle() -> None:
    edges = {"pushapp.sockets.a": [("pushapp.sockets.b", 1)],
             "pushapp.sockets.b": [("pushapp.sockets.c", 2)],
             "pushapp.sockets.c": [("pushapp.sockets.a", 3)],
             "pushapp.sockets.d": [("pushapp.sockets.a", 4)]}
    assert cycles(edges) == [["pushapp.sockets.a", "pushapp.sockets.b", "pushapp.sockets.c"]]


def test_relative_imports_resolve(tmp_path: Path) -> None:
    """``from ..store import batching`` inside pushapp/sockets/ is pushapp.store.batching."""
    path = PACKAGE / "sockets" / "delivery.py"
    known = set(modules())
    targets = {target for target, _ in imports("pushapp.sockets.delivery", path, known)}
    assert "pushapp.store.batching" in targets and "pushapp.config" in targets
