"""The layers hold: a stage (synthesis, training, evaluation) imports no other stage, `shared/` imports no stage,
and none of them nor `agent/`, `web/`, `llm/` imports dagster (imports at any depth, relative ones resolved)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import webdancer_dagster

PACKAGE_DIR = Path(webdancer_dagster.__file__).parent
STAGES = ("synthesis", "training", "evaluation")
DOMAIN_LAYERS = ("agent", "web", "llm", "shared", *STAGES)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports: `import a.b` gives `a.b`, `from a import b` gives `a`, relative ones resolved."""
    package = ".".join(path.relative_to(PACKAGE_DIR.parent).parent.parts)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            names.add(".".join([*base, *([node.module] if node.module else [])]))
    return names


def offenders(layer: str, forbidden: set[str]) -> dict[str, list[str]]:
    """The modules of `layer` that import a `forbidden` module (or one below it), with those imports."""
    found = {}
    for path in sorted((PACKAGE_DIR / layer).rglob("*.py")):
        bad = [name for name in sorted(imported_modules(path)) if any(_within(name, module) for module in forbidden)]
        if bad:
            found[str(path.relative_to(PACKAGE_DIR))] = bad
    return found


def _within(name: str, module: str) -> bool:
    return name == module or name.startswith(f"{module}.")


@pytest.mark.parametrize("layer", [*STAGES, "shared"])
def test_no_stage_imports_another_stage(layer):
    other_stages = {f"webdancer_dagster.{stage}" for stage in STAGES if stage != layer}
    assert offenders(layer, other_stages) == {}


@pytest.mark.parametrize("layer", DOMAIN_LAYERS)
def test_domain_layers_do_not_import_dagster(layer):
    assert offenders(layer, {"dagster"}) == {}


def test_the_check_sees_relative_and_nested_imports(tmp_path, monkeypatch):
    package = tmp_path / "webdancer_dagster"
    (package / "training").mkdir(parents=True)
    nested = "def load():\n    from ..synthesis import qa\n    import dagster as dg\n    import dagster_pipes\n"
    (package / "training" / "module.py").write_text(nested)
    monkeypatch.setattr(f"{__name__}.PACKAGE_DIR", package)
    assert offenders("training", {"webdancer_dagster.synthesis"}) == {
        "training/module.py": ["webdancer_dagster.synthesis"]
    }
    assert offenders("training", {"dagster"}) == {"training/module.py": ["dagster"]}
