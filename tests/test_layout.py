"""The package's shape: imports form a one-way tower (no cycle, `__main__` blocks included,
nothing upward), CONTRIBUTING.md's map matches the code, lazy imports are only the documented
kinds, every module's test file exercises it, and no test file borrows from another."""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterator
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "shardgan"
TESTS = ROOT / "tests"


def module_name(path: Path) -> str:
    """shardgan/a/b.py -> "a.b", shardgan/a/__init__.py -> "a": dotted, relative to shardgan."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if p != PACKAGE / "__init__.py"}
"""Every module of the package, subpackages included (shardgan/__init__.py holds only the version)."""
MODULES = sorted(FILES)
OPTIONAL_DEPENDENCIES = ("av", "boto3", "botocore", "matplotlib", "torch.utils.tensorboard", "torchmetrics")
"""Imported where they are used, so the rest of shardgan works without them."""


def _walk(tree: ast.AST, top: bool = True) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """(node, is at module level) for every import, `if __name__ == "__main__":` blocks included:
    what a module imports when it is the program is an edge like any other."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, top
        yield from _walk(node, top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))


def _imported(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """The absolute dotted names an import statement may bind, in a module of `package` (dotted):
    `from .x import y` in package shardgan.a names shardgan.a.x.y (y may be a submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
    return [f"{base}.{a.name}" for a in node.names]


def _owner(dotted: str, modules: Collection[str]) -> str | None:
    """The shardgan module a dotted name lies in (the longest module prefix), or None."""
    parts = dotted.split(".")
    if parts[0] != "shardgan":
        return None
    return next((m for n in range(len(parts), 1, -1) if (m := ".".join(parts[1:n])) in modules), None)


def _package_of(module: str) -> str:
    """The dotted package relative imports in `module` start from."""
    is_package = FILES[module].name == "__init__.py"
    return ".".join(["shardgan", *(module.split(".") if is_package else module.split(".")[:-1])])


def _targets(node: ast.Import | ast.ImportFrom, package: str = "shardgan", modules: Collection[str] = FILES) -> list[str]:
    """The shardgan modules an import statement names (relative or absolute)."""
    return sorted({m for name in _imported(node, package) if (m := _owner(name, modules))})


def package_imports() -> dict[str, set[str]]:
    """module -> the shardgan modules it imports anywhere in its code (function bodies and
    `__main__` blocks included)."""
    graph = {}
    for module, path in FILES.items():
        tree = ast.parse(path.read_text())
        graph[module] = {t for node, _ in _walk(tree) for t in _targets(node, _package_of(module))}
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


def is_optional_dependency(name: str) -> bool:
    """`name` is one of OPTIONAL_DEPENDENCIES or a submodule of one ("avx" is not "av")."""
    return any(name == dep or name.startswith(f"{dep}.") for dep in OPTIONAL_DEPENDENCIES)


def public_names(tree: ast.Module, is_package: bool = False) -> set[str]:
    """Names a module defines at module level (in `if`/`try` blocks too) not starting with _;
    a package's `__init__` also counts what it re-exports by from-import."""
    names: set[str] = set()
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.ImportFrom) and is_package:
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            stack += node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", [])
            stack += [s for h in getattr(node, "handlers", []) for s in h.body]
    return {n for n in names if not n.startswith("_")}


def _dotted(node: ast.AST) -> str | None:
    """`a.b.c` as "a.b.c" (a chain of attribute accesses on a name), else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (base := _dotted(node.value)):
        return f"{base}.{node.attr}"
    return None


def used_names(tree: ast.Module, modules: Collection[str] = FILES) -> dict[str, set[str]]:
    """shardgan module -> the names a test file takes from it: `from shardgan.m import x`, or
    `m.x` after `import shardgan.m`, `import shardgan.m as m` or `from shardgan import m`."""
    aliases = {f"shardgan.{m}": m for m in modules}  # a local dotted name -> the module it is
    used: dict[str, set[str]] = {}
    for node, _ in _walk(tree):
        for alias, name in zip(node.names, _imported(node, "tests")):
            if name.removeprefix("shardgan.") in modules:  # the module itself
                aliases[alias.asname or alias.name] = name.removeprefix("shardgan.")
            elif isinstance(node, ast.ImportFrom) and (owner := _owner(name, modules)):
                used.setdefault(owner, set()).add(alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (owner := aliases.get(_dotted(node.value) or "")):
            used.setdefault(owner, set()).add(node.attr)
    return used


def run_as_programs(tree: ast.Module) -> set[str]:
    """The shardgan modules a test file runs as programs: "-m", "shardgan.<module>" in one list or
    tuple (a command line), which runs the module's own command, its public `main`."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)):
            words = [e.value if isinstance(e, ast.Constant) and isinstance(e.value, str) else "" for e in node.elts]
            found |= {word.removeprefix("shardgan.") for flag, word in zip(words, words[1:]) if flag == "-m" and word.startswith("shardgan.")}
    return found


def mirror_of(module: str) -> Path:
    """shardgan/a.py -> tests/test_a.py; shardgan/a/b.py -> tests/test_a_b.py."""
    return TESTS / f"test_{module.replace('.', '_')}.py"


def borrowed_test_modules(code: str, package: str) -> list[str]:
    """The test modules (tests/**/test_*.py) that code in `package` (dotted, e.g. "tests.faults")
    imports: helpers they share belong in conftest.py or a tests/ module that is not a test file."""
    found = set()
    for node, _ in _walk(ast.parse(code)):
        names = _imported(node, package)
        if isinstance(node, ast.ImportFrom):
            names.append(names[0].rsplit(".", 1)[0])  # the module imported from
        for name in names:
            file = ROOT.joinpath(*name.split(".")).with_suffix(".py")
            if name.startswith("tests.") and file.name.startswith("test_") and file.is_file():
                found.add(name)
    return sorted(found)


def test_the_graph_checks_catch_a_cycle_and_read_every_import_form() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    modules = ["checkpoint", "loader", "models", "plan", "pack", "pack.chunks", "pack.pool"]
    code = "from . import checkpoint as ckpt, __version__\nfrom .loader import X\nimport shardgan.plan\nfrom shardgan.models import Y\nimport torch\n"
    assert sorted(t for node, _ in _walk(ast.parse(code)) for t in _targets(node, "shardgan", modules)) == ["checkpoint", "loader", "models", "plan"]
    nested = ast.parse("def f():\n    from .viz import g\nif __name__ == '__main__':\n    from .cli import main\n")
    assert [(_targets(node, "shardgan", ["viz", "cli"]), top) for node, top in _walk(nested)] == [(["viz"], False), (["cli"], True)]
    inside = "from . import pool\nfrom .chunks import encode\nfrom .. import loader\nfrom ..checkpoint import save\nfrom shardgan.pack import chunks\nfrom shardgan.pack import run\n"
    found = [_targets(node, "shardgan.pack", modules) for node, _ in _walk(ast.parse(inside))]
    assert found == [["pack.pool"], ["pack.chunks"], ["loader"], ["checkpoint"], ["pack.chunks"], ["pack"]]


def test_modules_are_named_by_their_dotted_path_subpackages_included() -> None:
    assert [module_name(PACKAGE / p) for p in ("cli.py", "pack/__init__.py", "pack/chunks.py")] == ["cli", "pack", "pack.chunks"]
    assert mirror_of("pack.chunks") == TESTS / "test_pack_chunks.py"



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


def test_optional_dependencies_match_by_name_not_prefix() -> None:
    assert all(map(is_optional_dependency, ["av", "matplotlib.pyplot", "torch.utils.tensorboard", "botocore.config"]))
    assert not any(map(is_optional_dependency, ["avro", "matplotlibx", "torch.utils", "torch.utils.tensorboardX", ".av"]))


def test_lazy_imports_are_only_the_clis_and_optional_dependencies() -> None:
    lazy = []
    for module, path in FILES.items():
        for node, top in _walk(ast.parse(path.read_text())):
            if top or module == "cli" and _targets(node, _package_of(module)):
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else ["." * node.level + (node.module or "")]
            lazy += [f"{module}: {name}" for name in names if not is_optional_dependency(name)]
    assert lazy == []


def test_a_test_file_counts_only_names_it_takes_from_its_module() -> None:
    modules = ["frames", "pack", "pack.chunks"]
    code = (
        "import shardgan.frames\nimport shardgan.pack as p\nfrom shardgan import pack\nfrom shardgan.pack import chunks as c\n"
        "from shardgan.frames import scan\nshardgan.frames.load(p.run, pack.Options, c.encode)\n"
    )
    assert used_names(ast.parse(code), modules) == {"frames": {"scan", "load"}, "pack": {"run", "Options"}, "pack.chunks": {"encode"}}
    tree = ast.parse("A = 1\nB: int = 2\n_c = 3\ndef f(): pass\nclass K: pass\nif True:\n    X, Y = 1, 2\nfrom .m import R\n")
    assert public_names(tree) == {"A", "B", "f", "K", "X", "Y"} and "R" in public_names(tree, is_package=True)
    command = ast.parse('run([PYTHON, "-m", "shardgan.launch", "-m", "shardgan.train"])\nrun(["shardgan.viz", "-m"])\n')
    assert run_as_programs(command) == {"launch", "train"}


def test_every_module_has_a_test_module_that_uses_it() -> None:
    missing, unused = [], []
    for module, path in FILES.items():
        if module.split(".")[-1] == "__main__":  # the program only: test_cli runs `python -m shardgan`
            continue
        test_file = mirror_of(module)
        if not test_file.exists():
            missing.append(module)
            continue
        names = public_names(ast.parse(path.read_text()), path.name == "__init__.py")
        tree = ast.parse(test_file.read_text())
        if not names & used_names(tree).get(module, set()) and module not in run_as_programs(tree):
            unused.append(f"{test_file.relative_to(ROOT)} uses none of {module}'s public names and does not run it")
    assert missing == [], "these modules have no tests/test_<module>.py"
    assert unused == []


def test_a_test_file_borrowing_from_another_is_found() -> None:
    borrowing = ["from .test_layout import FILES", "from tests import test_layout", "import tests.test_layout as t", "from ..test_layout import FILES"]
    assert [borrowed_test_modules(code, "tests.faults" if ".." in code else "tests") for code in borrowing] == [["tests.test_layout"]] * 4
    assert borrowed_test_modules("from tests.conftest import ROOT\nfrom . import conftest\nfrom .trainer_runs import STEPS\n", "tests") == []


def test_no_test_file_imports_from_another() -> None:
    borrowing = {}
    for path in sorted(TESTS.rglob("*.py")):
        if found := borrowed_test_modules(path.read_text(), ".".join(path.parent.relative_to(ROOT).parts)):
            borrowing[str(path.relative_to(ROOT))] = found
    assert borrowing == {}, "move shared helpers to tests/conftest.py or a tests/ module that is not a test file"
