"""The package's shape, held: no import cycles, short import chains, few top-level modules, wings that import
only downwards, and each public name importable from one module (no re-exports)."""

from __future__ import annotations

import ast

from tools.import_graph import cycles, graph, longest_chain, modules

# Wings from the bottom up: a module imports from its own wing or a lower layer, never a higher one.
LAYERS = [
    {"errors", "redact", "config", "config_file", "cluster"},  # the foundations (top-level modules)
    {"store", "fetch"},
    {"media"},
    {"models"},
    {"stages", "index", "demo"},
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


def test_no_re_exports() -> None:
    """A name is imported from the module that defines it: no `__all__` lists of imported names, and no
    package __init__ that imports from its modules."""
    offenders = []
    for module, path in modules().items():
        tree = ast.parse(path.read_text())
        defined = {
            n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        } | {
            t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)
        }
        for node in tree.body:
            exported = isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            )
            if exported:
                names = ast.literal_eval(node.value)
                lazy = (
                    {"__version__", "search", "vectorize_image", "vectorize_text"}
                    if module == "embedding"
                    else set()
                )
                offenders += [f"{module}.{n}" for n in names if n not in defined and n not in lazy]
            if path.name == "__init__.py" and module != "embedding" and isinstance(node, ast.ImportFrom):
                offenders.append(f"{module} imports from {node.module}")
    assert offenders == []
