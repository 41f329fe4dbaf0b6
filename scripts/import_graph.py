"""Import circles and upward imports in `supervisor`, counted from the import graph (grimp,
the graph import-linter checks; imports under TYPE_CHECKING count: a type is knowledge too).

    python scripts/import_graph.py          the numbers and every circle / upward import
    python scripts/import_graph.py --check  the same, exit 1 unless both are zero

A circle is a strongly connected set of modules (or of the packages and top-level modules
that hold them); an upward import goes from a lower layer of LAYERS to a higher one.
LAYERS is read from the `layers` contract of pyproject.toml; the numbers can also be
taken on a tree that does not satisfy it yet.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

import grimp

ROOT = "supervisor"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this tree's, not an installed one


def contract_layers() -> tuple[tuple[str, ...], ...]:
    """The `layers` contract of pyproject.toml, lowest first (one source for both tools)."""
    config = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    for contract in config["tool"]["importlinter"]["contracts"]:
        if contract["id"] == "layers":
            return tuple(tuple(n.strip() for n in layer.split("|"))
                         for layer in reversed(contract["layers"]))
    raise SystemExit("pyproject.toml has no import-linter contract with id 'layers'")


# Lowest first; a module's layer is that of its longest listed prefix.
LAYERS = contract_layers()


def edges(graph: grimp.ImportGraph) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m in graph.modules:
        if m == ROOT or m.startswith(ROOT + "."):
            out[m] = {i for i in graph.find_modules_directly_imported_by(m)
                      if i.startswith(ROOT + ".") and i != m}
    return out


def circles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                elif nxt in on:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def package_of(module: str) -> str:
    """`supervisor.proxy.routes` -> `proxy`; a top-level module stands for itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def layer_of(module: str) -> int | None:
    rel = module.removeprefix(ROOT + ".")
    best: tuple[int, int] | None = None
    for rank, names in enumerate(LAYERS):
        for name in names:
            inside = rel == name or rel.startswith(name + ".")
            if inside and (best is None or len(name) > best[0]):
                best = (len(name), rank)
    return None if best is None else best[1]


def main() -> int:
    graph = edges(grimp.build_graph(ROOT, cache_dir=None))
    modules = circles(graph)
    packages: dict[str, set[str]] = {}
    for m, targets in graph.items():
        packages.setdefault(package_of(m), set()).update(
            package_of(t) for t in targets if package_of(t) != package_of(m))
    package_circles = circles(packages)
    upward = sorted((m, t) for m, targets in graph.items() for t in targets
                    if (a := layer_of(m)) is not None and (b := layer_of(t)) is not None
                    and b > a)
    unlayered = sorted(m for m in graph if m != ROOT and layer_of(m) is None)
    print(f"modules: {len(graph)}, imports: {sum(map(len, graph.values()))}")
    print(f"module circles: {len(modules)}")
    for c in modules:
        print("  " + " <-> ".join(c))
    print(f"package circles: {len(package_circles)}")
    for c in package_circles:
        print("  " + " <-> ".join(c))
    print(f"upward imports: {len(upward)}")
    for m, t in upward:
        print(f"  {m} -> {t}")
    print(f"modules in no layer: {len(unlayered)}")
    for m in unlayered:
        print(f"  {m}")
    failed = modules or package_circles or upward or unlayered
    return 1 if "--check" in sys.argv and failed else 0


if __name__ == "__main__":
    sys.exit(main())
