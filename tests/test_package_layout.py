"""Test stand-ins stay out of production code: no module of `webdancer_dagster` outside `webdancer_dagster/testing/`
imports `webdancer_dagster.testing`, in any import form and at any depth (module level or inside a function)."""

import ast
from pathlib import Path

import pytest

import webdancer_dagster

PACKAGE = "webdancer_dagster"
TESTING = f"{PACKAGE}.testing"
PACKAGE_DIR = Path(webdancer_dagster.__file__).parent
DYNAMIC_IMPORTS = {"import_module", "__import__"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every module name the source imports or may import: `import a.b`, `from a import b` (as `a` and `a.b`),
    relative imports resolved against `module`, and `importlib.import_module`/`__import__` of a literal string."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            names.add(origin)
            names.update(f"{origin}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if called in DYNAMIC_IMPORTS and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


def _imports_testing(source: str, module: str, is_package: bool = False) -> bool:
    return any(
        name == TESTING or name.startswith(f"{TESTING}.") for name in _imported_modules(source, module, is_package)
    )


def test_no_production_module_imports_the_testing_package():
    production = [path for path in sorted(PACKAGE_DIR.rglob("*.py")) if PACKAGE_DIR / "testing" not in path.parents]
    assert len(production) > 20 and all(path.name != "scripted_llm.py" for path in production)
    offenders = [
        str(path.relative_to(PACKAGE_DIR.parent))
        for path in production
        if _imports_testing(path.read_text(), _module_name(path), is_package=path.name == "__init__.py")
    ]
    assert not offenders, f"production modules import {TESTING}: {offenders}"


def test_the_testing_package_says_it_is_for_tests_and_benchmarks_only():
    modules = sorted((PACKAGE_DIR / "testing").glob("*.py"))
    assert {path.name for path in modules} >= {"__init__.py", "scripted_llm.py", "tiny_model.py"}
    for path in modules:
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert "tests and benchmarks only" in docstring, path.name


@pytest.mark.parametrize(
    ("source", "module", "is_package"),
    [
        ("import webdancer_dagster.testing", "webdancer_dagster.cli", False),
        ("import webdancer_dagster.testing.tiny_model as tiny", "webdancer_dagster.cli", False),
        ("from webdancer_dagster.testing.scripted_llm import ScriptedReply", "webdancer_dagster.cli", False),
        ("from webdancer_dagster.testing import tiny_model", "webdancer_dagster.cli", False),
        ("from webdancer_dagster import testing", "webdancer_dagster.cli", False),
        ("from webdancer_dagster import files, testing as t", "webdancer_dagster.cli", False),
        ("from . import testing", "webdancer_dagster.cli", False),
        ("from . import testing", "webdancer_dagster", True),
        ("from .testing.tiny_model import create_tiny_llama", "webdancer_dagster.pipeline", False),
        ("from ..testing import scripted_llm", "webdancer_dagster.llm.client", False),
        ("from ...testing import scripted_llm", "webdancer_dagster.web.sub.module", False),
        ("from .. import testing", "webdancer_dagster.training", True),
        ("def f():\n    if x:\n        from webdancer_dagster.testing import tiny_model", "webdancer_dagster.x", False),
        ("class A:\n    def m(self):\n        import webdancer_dagster.testing.tiny_model", "webdancer_dagster", True),
        ("import importlib\nimportlib.import_module('webdancer_dagster.testing')", "webdancer_dagster.x", False),
        ("__import__('webdancer_dagster.testing')", "webdancer_dagster.x", False),
    ],
)  # fmt: skip
def test_every_import_form_of_the_testing_package_is_caught(source, module, is_package):
    assert _imports_testing(source, module, is_package)


@pytest.mark.parametrize(
    ("source", "module", "is_package"),
    [
        ("import webdancer_dagster.training", "webdancer_dagster.cli", False),
        ("from webdancer_dagster.training import base_model", "webdancer_dagster.cli", False),
        ("from typer.testing import CliRunner", "webdancer_dagster.cli", False),
        ("import torch.testing", "webdancer_dagster.cli", False),
        ("from .testing import x", "webdancer_dagster.llm.client", False),  # webdancer_dagster.llm.testing
        ("from webdancer_dagster import testing_tools", "webdancer_dagster.cli", False),
    ],
)
def test_other_imports_are_not_flagged(source, module, is_package):
    assert not _imports_testing(source, module, is_package)
