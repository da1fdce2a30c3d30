"""The project's import graph: which of its modules import which, the cycles, and the
imports that go against the layering `nas_engine` <- `webapp` <- `workers`.

    python -m tests.import_graph          # cycles and upward imports; exit 1 if any
    python -m tests.import_graph --edges  # every edge, one per line

Every import counts, at module level or inside a function: a deferred import hides a
cycle from Python, not from the design. `from a.b import c` is an edge to `a.b.c` when
that is a module of ours, else to `a.b`. A package's `__init__` is the module `a.b`.
tests/test_layering.py asserts on this; the closing notes quote it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nas_engine", "webapp", "workers")
# Layer order: a module may import its own layer and those before it, never one after it.
LAYERS = {"nas_engine": 0, "webapp": 1, "workers": 2}
# What the engine must never import (pure Python + PyTorch), and what the web app must not.
FORBIDDEN_THIRD_PARTY = {
    "nas_engine": ("django", "celery", "channels", "channels_redis", "rest_framework", "daphne", "kombu", "redis"),
    "webapp": (),
    "workers": (),
}


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue  # generated, and they import only Django and their app
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imported_names(module: str, path: Path) -> Iterable[str]:
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names)


def graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between our modules, third-party top-level packages each module imports)."""
    modules = project_modules(root)
    edges: dict[str, set[str]] = {name: set() for name in modules}
    external: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        names = list(_imported_names(name, path))
        for imported in names:
            top = imported.split(".")[0]
            if top not in PACKAGES:
                if top:
                    external[name].add(top)
                continue
            # the longest prefix that is one of our modules
            parts = imported.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            target = ".".join(parts)
            if target and target != name:
                edges[name].add(target)
        # `from a.b import c` where c is a module adds both a.b and a.b.c: keep a.b only
        # when something other than submodules was taken from it (an __init__ import).
        for target in list(edges[name]):
            children = {t for t in edges[name] if t.startswith(target + ".")}
            if children and not _imports_names_from(path, target, modules):
                edges[name].discard(target)
    return edges, external


def _imports_names_from(path: Path, package: str, modules: dict[str, Path]) -> bool:
    """Whether the file takes anything from `package` that is not a submodule."""
    for node in ast.walk(ast.parse(path.read_text())):
        taken = node.names if isinstance(node, ast.ImportFrom) and not node.level and node.module == package else []
        if any(f"{package}.{a.name}" not in modules for a in taken):
            return True
        if isinstance(node, ast.Import) and any(a.name == package for a in node.names):
            return True
    return False


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(out)


def upward(edges: dict[str, set[str]], external: dict[str, set[str]]) -> list[str]:
    """Imports against the layering, one line each."""
    out = []
    for source in sorted(edges):
        layer = LAYERS[source.split(".")[0]]
        for target in sorted(edges[source]):
            if LAYERS[target.split(".")[0]] > layer:
                out.append(f"{source} -> {target}")
        forbidden = FORBIDDEN_THIRD_PARTY[source.split(".")[0]]
        out += [f"{source} -> {name}" for name in sorted(external[source]) if name in forbidden]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.import_graph", description=__doc__.split("\n\n")[0])
    parser.add_argument("--edges", action="store_true", help="print every edge")
    args = parser.parse_args(argv)
    edges, external = graph()
    if args.edges:
        for source in sorted(edges):
            for target in sorted(edges[source]):
                print(f"{source} -> {target}")
    found_cycles, found_upward = cycles(edges), upward(edges, external)
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} imports between them")
    print(f"cycles: {len(found_cycles)}")
    for component in found_cycles:
        print("  " + " <-> ".join(component))
    print(f"upward imports: {len(found_upward)}")
    for line in found_upward:
        print("  " + line)
    return 1 if found_cycles or found_upward else 0


if __name__ == "__main__":
    sys.exit(main())
