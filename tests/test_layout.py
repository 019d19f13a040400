"""The package's shape: imports form a one-way tower (no cycle, nothing upward), CONTRIBUTING.md's
map matches the code, lazy imports are only the documented kinds, every module has its tests."""

from __future__ import annotations

import ast

from tests.conftest import ROOT

PACKAGE = ROOT / "shardgan"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
OPTIONAL_DEPENDENCIES = ("av", "boto3", "botocore", "matplotlib", "torch.utils.tensorboard", "torchmetrics")
"""Imported where they are used, so the rest of shardgan works without them."""


def _is_main_block(node: ast.AST) -> bool:
    """`if __name__ == "__main__":` runs only when the module is the program, so its imports are
    not edges of the package's import graph."""
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"


def _walk(tree: ast.AST, top: bool = True):
    """(node, is at module level) for every import, skipping `__main__` blocks."""
    for node in ast.iter_child_nodes(tree):
        if _is_main_block(node):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, top
        yield from _walk(node, top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))


def _targets(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The shardgan modules an import statement names (relative or absolute)."""
    if isinstance(node, ast.Import):
        return [a.name.split(".")[1] for a in node.names if a.name.startswith("shardgan.")]
    if node.level == 0 and not (node.module or "").startswith("shardgan"):
        return []
    module = node.module if node.level else (node.module or "").removeprefix("shardgan").lstrip(".") or None
    if module:
        return [module.split(".")[0]]
    return [a.name for a in node.names if a.name in MODULES]  # `from . import checkpoint as ckpt`


def package_imports() -> dict[str, set[str]]:
    """module -> the shardgan modules it imports anywhere in its code (function bodies included)."""
    graph = {}
    for module in MODULES:
        tree = ast.parse((PACKAGE / f"{module}.py").read_text())
        graph[module] = {t for node, _ in _walk(tree) for t in _targets(node)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def contributing_map() -> list[tuple[str, set[str]]]:
    """CONTRIBUTING.md's package map, top row first: (module, the modules it may import)."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    table = text[text.index("<!-- package map") :].split("\n\n")[0]
    rows = []
    for line in table.splitlines()[3:]:  # the comment, the header and its rule
        module, _owns, may = (cell.strip() for cell in line.strip().strip("|").split("|"))
        allowed = set() if may == "-" else {m.strip() for m in may.split(",")}
        rows.append((module.strip("`"), allowed))
    return rows


def test_the_graph_checks_catch_a_cycle_and_read_every_import_form() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    code = "from . import checkpoint as ckpt, __version__\nfrom .loader import X\nimport shardgan.plan\nfrom shardgan.models import Y\nimport torch\n"
    assert sorted(t for node, _ in _walk(ast.parse(code)) for t in _targets(node)) == ["checkpoint", "loader", "models", "plan"]
    nested = ast.parse("def f():\n    from .viz import g\nif __name__ == '__main__':\n    from .cli import main\n")
    assert [(_targets(node), top) for node, top in _walk(nested)] == [(["viz"], False)]


def test_no_import_cycle() -> None:
    assert find_cycle(package_imports()) is None


def test_the_map_lists_every_module_once() -> None:
    listed = [module for module, _ in contributing_map()]
    assert sorted(listed) == MODULES and len(set(listed)) == len(listed)


def test_every_import_is_on_the_map_and_goes_down_the_tower() -> None:
    rows = contributing_map()
    below = {module: {m for m, _ in rows[i + 1 :]} for i, (module, _) in enumerate(rows)}
    upward = {module: sorted(allowed - below[module]) for module, allowed in rows if allowed - below[module]}
    assert upward == {}, "the map lets these modules import from above their row"
    found = package_imports()
    mismatched = {module: {"imports": sorted(found[module]), "map says": sorted(allowed)} for module, allowed in rows if found[module] != allowed}
    assert mismatched == {}, "CONTRIBUTING.md's map differs from the code's imports"


def test_lazy_imports_are_only_the_clis_and_optional_dependencies() -> None:
    lazy = []
    for module in MODULES:
        for node, top in _walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or "."]
            if top or module == "cli" and isinstance(node, ast.ImportFrom) and node.level == 1:
                continue
            lazy += [f"{module}: {name}" for name in names if not name.startswith(OPTIONAL_DEPENDENCIES)]
    assert lazy == []


def test_every_module_has_a_test_module() -> None:
    untested = [m for m in MODULES if m != "__main__" and not (ROOT / "tests" / f"test_{m}.py").exists()]
    assert untested == []

