"""pyproject.toml: the pgpool package depends on exactly what pgpool imports; tools live in extras."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Declared ahead of the code that imports it: the session classifier (pgpool/session.py) uses pglast.
DECLARED_AHEAD = {"pglast"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def imported_distributions() -> set[str]:
    """Distributions providing the top-level modules pgpool's own code imports."""
    modules = set()
    for path in (REPO / "pgpool").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"pgpool"}
    providers = packages_distributions()
    missing = [module for module in third_party if module not in providers]
    assert not missing, f"pgpool imports modules no installed distribution provides: {missing}"
    return {_name(dist) for module in third_party for dist in providers[module]}


def test_runtime_dependencies_are_what_pgpool_imports():
    declared = {_name(req) for req in PYPROJECT["project"]["dependencies"]}
    imported = imported_distributions()
    assert imported <= declared, f"pgpool imports {sorted(imported - declared)} without declaring them"
    assert declared - imported <= DECLARED_AHEAD, (
        f"runtime dependencies pgpool never imports: {sorted(declared - imported - DECLARED_AHEAD)}; "
        f"move them to the dev extra")


def test_tools_of_the_tests_and_harness_stay_out_of_the_runtime():
    declared = {_name(req) for req in PYPROJECT["project"]["dependencies"]}
    dev = {_name(req) for req in PYPROJECT["project"]["optional-dependencies"]["dev"]}
    assert {"asyncpg", "psycopg", "sqlalchemy", "pytest", "mkdocs"} <= dev
    assert not declared & {"asyncpg", "psycopg", "sqlalchemy", "pytest", "mkdocs", "hypothesis"}
