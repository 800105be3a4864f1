"""Imports run one way: the import-linter contracts in pyproject.toml hold for this tree, and they
are not vacuous (an upward import added to a copy of the package breaks them)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pgpool.client import ClientHost
from pgpool.pool import PooledServer, PoolHost
from pgpool.server import LinkedClient
from tests.protocol.fakes import Plane

REPO = Path(__file__).resolve().parents[2]
# lint-imports, run by the interpreter running the tests; --no-cache: nothing written into the tree.
LINT_IMPORTS = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                "sys.exit(lint_imports_command())", "--no-cache"]


def run_lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports over the `pgpool` package found in `root`, with `root`'s pyproject.toml."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(LINT_IMPORTS, cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_import_contracts_hold() -> None:
    result = run_lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


def copy_tree(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "pgpool", tmp_path / "pgpool", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_line(path: Path, line: str) -> None:
    path.write_text(path.read_text() + "\n" + line + "\n")


def test_an_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    # Inside a function and under TYPE_CHECKING both count: neither can dodge the contract.
    root = copy_tree(tmp_path)
    add_line(root / "pgpool" / "pool.py", "def _dodge():\n    from .server import ServerConnection")
    add_line(root / "pgpool" / "client.py", "if TYPE_CHECKING:\n    from .app import App")
    result = run_lint_imports(root)
    assert result.returncode != 0
    assert "pgpool.pool is not allowed to import pgpool.server" in result.stdout, result.stdout
    assert "pgpool.client is not allowed to import pgpool.app" in result.stdout, result.stdout


def test_sans_io_code_may_not_import_asyncio(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    add_line(root / "pgpool" / "protocol" / "framing.py", "import asyncio")
    result = run_lint_imports(root)
    assert result.returncode != 0
    assert "pgpool.protocol.framing -> asyncio" in result.stdout, result.stdout


def test_every_module_has_a_layer(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    (root / "pgpool" / "unplaced.py").write_text('"""A module nobody gave a layer."""\n')
    result = run_lint_imports(root)
    assert result.returncode != 0
    assert "pgpool.unplaced" in result.stdout, result.stdout


def protocol_members(protocol: type) -> set[str]:
    """Attributes and methods a typing.Protocol declares (its own, not object's or Protocol's)."""
    names = set(getattr(protocol, "__annotations__", {}))
    names.update(name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_"))
    return names


def test_the_real_objects_have_what_the_protocols_ask() -> None:
    # The protocols that replace calls back up are only right while the objects above match them.
    plane = Plane()
    client = plane.add_client()
    server = plane.link(client)
    for obj, protocol in ((plane.app, ClientHost), (plane.app, PoolHost), (server, PooledServer),
                          (client, LinkedClient)):
        missing = sorted(name for name in protocol_members(protocol) if not hasattr(obj, name))
        assert not missing, f"{type(obj).__name__} lacks {missing} of {protocol.__name__}"
        assert protocol_members(protocol), protocol


def attributes_used(module: str, *receivers: str) -> set[str]:
    """Names of the attributes pgpool/<module>.py reads or calls on any of `receivers`
    (`app` matches both `app.x` and `self.app.x`, `client` both `client.x` and `self.client.x`)."""
    used = set()
    for node in ast.walk(ast.parse((REPO / "pgpool" / f"{module}.py").read_text())):
        if isinstance(node, ast.Attribute):
            base = node.value
            name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else None
            if name in receivers:
                used.add(node.attr)
    return used


def test_the_protocols_name_everything_the_lower_module_uses() -> None:
    # A call back up that bypasses its protocol would be an unchecked dependency on the module above.
    for module, receivers, protocol in (("client", ("app",), ClientHost), ("pool", ("app",), PoolHost),
                                        ("server", ("app",), PoolHost), ("server", ("client",), LinkedClient),
                                        ("pool", ("server", "attempt"), PooledServer)):
        used = attributes_used(module, *receivers)
        assert used, (module, receivers)
        unnamed = sorted(used - protocol_members(protocol))
        assert not unnamed, f"{module}.py uses {unnamed} of {'/'.join(receivers)}, not in {protocol.__name__}"
