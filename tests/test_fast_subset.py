"""The fast subset (``pytest -m "not slow"``) reaches every module of the package: each module
is imported by a test module that has a test not marked slow, or by a module such an import
reaches. Read from the source (no test is run, nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "introspect"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_slow(decorators: list[ast.expr]) -> bool:
    """Whether a decorator list holds ``pytest.mark.slow`` (called or not)."""
    for deco in decorators:
        node = deco.func if isinstance(deco, ast.Call) else deco
        if isinstance(node, ast.Attribute) and node.attr == "slow":
            return True
    return False


def _module_marked_slow(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            value = node.value
            return _is_slow(value.elts if isinstance(value, ast.List | ast.Tuple) else [value])
    return False


def _imported(node: ast.AST, here: str) -> set[str]:
    """Modules of the package that the import statements under ``node`` name (``here`` is
    the importing module, for relative imports); ``from pkg import name`` also names
    ``pkg.name`` where that is a module."""
    found: set[str] = set()
    for item in ast.walk(node):
        if isinstance(item, ast.Import):
            found |= {alias.name for alias in item.names}
        elif isinstance(item, ast.ImportFrom):
            base = item.module or ""
            if item.level:
                anchor = here.split(".")[: -item.level]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in item.names}
    out = set()
    for name in found:
        while name and name not in MODULES:  # a name inside a module: the module itself
            name = name.rpartition(".")[0]
        if name.startswith("introspect"):
            out.add(name)
    return out


def _lazy_exports(tree: ast.Module) -> set[str]:
    """The submodules a package's ``_EXPORTS = {name: module}`` table loads on first use."""
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and target.id == "_EXPORTS" and isinstance(value, ast.Dict):
            return {v.value for v in value.values if isinstance(v, ast.Constant)}
    return set()


def _reached(start: set[str]) -> set[str]:
    """``start`` and every module of the package that they import, directly or not (each
    package's ``__init__`` included)."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen or name not in MODULES:
            continue
        seen.add(name)
        tree = ast.parse(MODULES[name].read_text())
        # A relative import counts from the package: a package's own name stands for its
        # __init__ module.
        here = f"{name}.__init__" if MODULES[name].name == "__init__.py" else name
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        todo += [*_imported(tree, here), *_lazy_exports(tree), *parents]
    return seen


def _fast_imports() -> dict[str, set[str]]:
    """``{test file: modules of the package it imports where a fast test runs}``: module-level
    imports of a file with a test not marked slow, and the imports inside its functions that
    are not marked slow."""
    out: dict[str, set[str]] = {}
    for path in sorted((REPO / "tests").glob("*.py")):
        tree = ast.parse(path.read_text())
        if _module_marked_slow(tree):
            continue
        functions = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        ]
        slow = {id(f) for f in functions if _is_slow(f.decorator_list)}
        for cls in (f for f in functions if isinstance(f, ast.ClassDef) and id(f) in slow):
            slow |= {id(n) for n in ast.walk(cls)}
        fast_tests = [f for f in functions if f.name.startswith("test_") and id(f) not in slow]
        if not fast_tests and path.name != "conftest.py":
            continue
        found = set()
        for node in tree.body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found |= _imported(node, "tests." + path.stem)
        for f in functions:
            if id(f) not in slow and isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef):
                found |= _imported(f, "tests." + path.stem)
        out[path.name] = found
    return out


def test_the_reader_sees_imports_marks_and_lazy_exports() -> None:
    """The parts the check below relies on, on known cases of this repository."""
    tree = ast.parse("import introspect.runs.lock\nfrom introspect.metrics import auroc\n")
    assert _imported(tree, "tests.x") == {"introspect.runs.lock", "introspect.metrics"}
    assert {"introspect", "introspect.runs"} <= _reached({"introspect.runs.lock"})
    relative = ast.parse("from . import lazy\nfrom .runs import lock")
    assert _imported(relative, "introspect.__init__") == {
        "introspect",
        "introspect.lazy",
        "introspect.runs",
        "introspect.runs.lock",
    }
    assert "introspect.metrics.ood" in _reached({"introspect.metrics"})  # via _EXPORTS
    slow = ast.parse("@pytest.mark.slow\ndef test_a(): pass\n@pytest.mark.x\ndef test_b(): pass")
    assert [_is_slow(f.decorator_list) for f in slow.body] == [True, False]


def test_every_module_is_reached_by_a_test_that_is_not_slow() -> None:
    reached = _reached(set().union(*_fast_imports().values()))
    missing = sorted(set(MODULES) - reached)
    assert not missing, f"no test outside the slow ones imports: {missing}"


def test_direct_imports_alone_leave_modules_out() -> None:
    """The check can fail: without following the package's own imports, modules are missing."""
    direct = set().union(*_fast_imports().values())
    assert set(MODULES) - direct
