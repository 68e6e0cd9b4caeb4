"""The package's import graph: cycles, the longest import chain, modules per folder.

    python tools/import_graph.py            # a summary
    python tools/import_graph.py --chain    # and the longest chain, module by module

Every `import embedding...` / `from embedding... import` counts, at module level or inside a function
(a lazy import is still a dependency a reader follows). tests/test_layout.py holds the limits.
"""

from __future__ import annotations

import argparse
import ast
import functools
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "embedding"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    # `from embedding.store import lease` names a module; `from embedding.store.lease import Lease` a name in
    # one.
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (packages' __init__ included, self-edges dropped)."""
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    for mod, path in known.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod if is_pkg else mod.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{base}" if base else pkg
                targets = [f"{base}.{a.name}" for a in node.names] or [base]
            for t in targets:
                if t == PACKAGE or t.startswith(PACKAGE + "."):
                    dep = _resolve(t, known)
                    if dep and dep != mod:
                        edges[mod].add(dep)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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

    for v in edges:
        if v not in index:
            visit(v)
    return out


def longest_chain(edges: dict[str, set[str]]) -> list[str]:
    """The longest import chain (in modules); on a graph with cycles, the cycles' edges are dropped first."""
    in_cycle = {m for c in cycles(edges) for m in c}
    dag = {m: {d for d in ds if not (m in in_cycle and d in in_cycle)} for m, ds in edges.items()}

    @functools.cache
    def chain(m: str) -> tuple[str, ...]:
        best: tuple[str, ...] = ()
        for d in sorted(dag[m]):
            c = chain(d)
            if len(c) > len(best):
                best = c
        return (m, *best)

    return list(max((chain(m) for m in sorted(dag)), key=len))


def folders(names: list[str]) -> Counter[str]:
    """Modules per folder (`embedding` is the top; a package's __init__ is not counted)."""
    known = modules()
    return Counter(
        n.rpartition(".")[0] for n in names if known[n].name != "__init__.py" and n.count(".") >= 1
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chain", action="store_true", help="print the longest chain")
    args = parser.parse_args()
    edges = graph()
    chain = longest_chain(edges)
    print(f"modules: {len(edges)}; imports: {sum(map(len, edges.values()))}")
    print(f"cycles: {cycles(edges) or 'none'}")
    print(f"longest chain: {len(chain)} modules")
    if args.chain:
        print("  " + "\n  -> ".join(chain))
    for folder, count in sorted(folders(list(edges)).items()):
        print(f"  {folder + '/':28} {count} modules")


if __name__ == "__main__":
    main()
