"""The layout shows the architecture: no import circle in core/, plugins use only the public API,
shipped modules stay standard-library only, and core/ imports no engine."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import core

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("runproto", "lossmask", "chatrender")
"""Modules copied into plan/ beside workers: standard library only (jinja2 for chatrender)."""
ENGINES = {"torch", "transformers", "trl", "peft", "datasets", "accelerate", "torchtune", "unsloth", "axolotl",
           "openai", "bitsandbytes"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def core_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in (ROOT / "core").rglob("*.py")}
    graph = {}
    for m, p in modules.items():
        edges = {i for i in imports(p) if i in modules and i != "core" and i != m}
        # ``from core.data import formats`` imports the submodule, not (for this purpose) the package
        graph[m] = {e for e in edges if not any(o.startswith(e + ".") for o in edges)}
    return graph


def test_no_import_circle_in_core():
    graph = core_graph()
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            visit(n)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert not cycles, cycles


def test_core_imports_no_engine():
    for path in (ROOT / "core").rglob("*.py"):
        if "conformance" in path.parts:  # the test suite shipped to plugins computes references with transformers
            continue
        bad = {i.split(".")[0] for i in imports(path)} & ENGINES
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_modules_are_standard_library_only(name):
    import sys

    allowed = set(sys.stdlib_module_names) | {"jinja2"}
    used = {i.split(".")[0] for i in imports(ROOT / "core" / f"{name}.py")}
    assert used <= allowed, used - allowed


def plugin_files():
    """A plugin's modules the core loads (its workers run elsewhere; a ``__main__.py`` is a command of its own that
    drives the core as ``python -m core`` does, e.g. ``python -m plugins.openai attach RUN_DIR``)."""
    files = [p for p in (ROOT / "plugins").rglob("*.py")]
    files += [p for p in (ROOT / "contrib").rglob("*.py") if "tests" not in p.parts and "build" not in p.parts]
    return [p for p in files if "worker" not in p.name and p.name not in ("components.py", "glue.py", "__main__.py")]


@pytest.mark.parametrize("path", plugin_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_use_only_the_public_api(path):
    """Plugins import ``core`` and the names it exports (``core.__all__``), nothing deeper."""
    for name in imports(path):
        if name == "core" or not name.startswith("core"):
            continue
        assert name.removeprefix("core.") in core.__all__, f"{path.relative_to(ROOT)} imports {name}"


def test_backend_packages_share_one_layout():
    """Every first-party backend package: __init__.py holds only the hookimpl; backend.py the class and its
    config; translate.py the pure translation (no engine import)."""
    for pkg in ("trl", "torchtune"):
        folder = ROOT / "plugins" / pkg
        init = ast.parse((folder / "__init__.py").read_text())
        defs = [n.name for n in init.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert defs == ["register_backends"], (pkg, defs)
        backend = ast.parse((folder / "backend.py").read_text())
        classes = {n.name for n in backend.body if isinstance(n, ast.ClassDef)}
        assert any(c.endswith("Config") for c in classes) and len(classes) >= 2, (pkg, classes)
        assert not {i.split(".")[0] for i in imports(folder / "translate.py")} & ENGINES, pkg
