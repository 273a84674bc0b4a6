"""The import graph of the edgekd package, read from the source with `ast` (nothing is imported).

Every import of an edgekd module counts, at module level or inside a function: a function-level
import is still a dependency, only a later one. Prints the modules, the longest chain of
imports (its length in modules is the "depth") and any import cycle.

    python benchmarks/import_graph.py [--json]
"""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "edgekd"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom | ast.Import, known: set[str]) -> set[str]:
    """The edgekd modules one import statement names."""
    out = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            name = alias.name
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
        return out
    if node.level:
        base = importer.split(".") if is_package else importer.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target not in known:
        if node.level:  # a relative import of a module that is not there: an error, not an edge
            raise ImportError(f"{importer}: `from {'.' * node.level}{node.module or ''} import ...` "
                              f"names no module of the package (line {node.lineno})")
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target:
            out.add(target)
        return out
    for alias in node.names:  # `from . import export` names a module; `from . import x` a name
        sub = f"{target}.{alias.name}"
        out.add(sub if sub in known else target)
    return out


def graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    mods = modules(root)
    known = set(mods)
    g: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps |= _resolve(name, path.name == "__init__.py", node, known)
        # a module's own package (its __init__) is run first anyway: not an edge of the layout
        g[name] = {d for d in deps if d != name and not name.startswith(d + ".")}
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def longest_chain(g: dict[str, set[str]]) -> list[str]:
    """The longest chain of imports that visits no module twice (a -> b -> ... : a imports b)."""
    best: list[str] = []
    memo: dict[str, list[str]] = {}

    def walk(v: str, path: list[str], seen: set[str]) -> None:
        nonlocal best
        if len(path) > len(best):
            best = list(path)
        for w in sorted(g.get(v, ())):
            if w not in seen:
                seen.add(w)
                path.append(w)
                walk(w, path, seen)
                path.pop()
                seen.discard(w)

    if not cycles(g):  # acyclic: the longest path from each module, memoised
        def longest(v: str) -> list[str]:
            if v not in memo:
                tails = [longest(w) for w in sorted(g.get(v, ()))]  # sorted: ties break the same every run
                memo[v] = [v] + max(tails, key=len, default=[])
            return memo[v]
        return max((longest(v) for v in sorted(g)), key=len, default=[])
    for v in sorted(g):
        walk(v, [v], {v})
    return best


def main(argv: list[str]) -> int:
    g = graph()
    chain = longest_chain(g)
    loops = cycles(g)
    summary = {"modules": len(g), "depth": len(chain), "longest_chain": chain, "cycles": loops}
    if "--json" in argv:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{len(g)} modules; import depth {len(chain)} (longest chain of imports, in modules):")
    print("  " + " -> ".join(chain))
    print("cycles: " + ("; ".join(" <-> ".join(c) for c in loops) if loops else "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
