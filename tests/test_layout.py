"""The package's shape, held: no import cycles, short import chains, few top-level modules, wings that import
only downwards, and each public name importable from one module (no re-exports)."""

from __future__ import annotations

import ast

from tools.import_graph import cycles, graph, longest_chain, modules

# Wings from the bottom up: a module imports from its own wing or a lower layer, never a higher one.
LAYERS = [
    # the foundations (top-level modules)
    {"errors", "redact", "config", "config_sinks", "config_file", "cluster"},
    {"store", "fetch"},
    {"media"},
    {"models"},
    {"stages", "index", "demo", "sinks"},
    {"job", "api"},
    {"service"},
    {"cli", ""},  # "": the package's own __init__ (the lazy `embedding.search` & co.)
]
MAX_CHAIN = 10
LAZY = {"search", "vectorize_image", "vectorize_text"}
MAX_TOP = 8


def wing(module: str) -> str:
    """`embedding.job.plan` -> job; `embedding.config` -> config; `embedding` -> ""."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer(module: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if wing(module) in names)


def test_every_wing_has_a_layer() -> None:
    for module in modules():
        assert any(wing(module) in names for names in LAYERS), f"{module}: add its wing to LAYERS"


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_longest_import_chain() -> None:
    chain = longest_chain(graph())
    assert len(chain) <= MAX_CHAIN, " -> ".join(chain)


def test_few_modules_at_the_top() -> None:
    top = [m for m, path in modules().items() if m.count(".") == 1 and path.name != "__init__.py"]
    assert len(top) <= MAX_TOP, sorted(top)


def test_wings_import_downwards() -> None:
    upward = [
        f"{m} -> {d}"
        for m, deps in graph().items()
        for d in deps
        if wing(m) != wing(d) and layer(d) > layer(m)
    ]
    assert upward == []


def test_no_two_wings_import_each_other() -> None:
    """Wings of one layer may use each other, but one way only."""
    wings: dict[str, set[str]] = {}
    for m, deps in graph().items():
        wings.setdefault(wing(m), set()).update(wing(d) for d in deps if wing(d) != wing(m))
    assert cycles(wings) == []


def _defined(tree: ast.Module) -> set[str]:
    """The names a module defines itself (functions, classes, assignments), not those it imports."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                parts = target.elts if isinstance(target, ast.Tuple | ast.List) else [target]
                names |= {t.id for t in parts if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_each_name_is_imported_from_where_it_is_defined() -> None:
    """No re-exports: `from embedding.x import name` names a module of x's package, or a name that x
    defines; a name that x only imported from elsewhere is imported from there instead."""
    found = modules()
    trees = {m: ast.parse(path.read_text()) for m, path in found.items()}
    defined = {m: _defined(tree) for m, tree in trees.items()}
    defined["embedding"] |= LAZY  # the package's own lazy names, loaded from embedding.api
    offenders = []
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level or node.module not in found:
                continue
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}" in found
                if not submodule and alias.name not in defined[node.module]:
                    offenders.append(f"{module}: from {node.module} import {alias.name}")
    assert offenders == []


def test_packages_only_describe_their_wing() -> None:
    """A package's __init__ holds its docstring; `embedding` itself only names the lazy API."""
    offenders = []
    for module, path in modules().items():
        if path.name != "__init__.py" or module == "embedding":
            continue
        tree = ast.parse(path.read_text())
        if ast.get_docstring(tree) is None:
            offenders.append(f"{module}: no docstring")
        offenders += [f"{module}: line {n.lineno}" for n in tree.body[1:]]
    assert offenders == []
