"""The compiled build (setup.py, pgpool/_build.py): named by `pgpool --version`, never stale, switchable off.

An extension module runs only when the .py beside it has the hash recorded at build time. The
stale cases are driven in a copy of the package whose "extension" is a file that cannot load:
importing it would fail, so a passing import proves the hook ran the .py instead. `.ci/run`
sets PGPOOL_EXPECT_BUILD (compiled for the suite, pure for the protocol tests' second run).
"""

from __future__ import annotations

import ast
import importlib.machinery
import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pgpool
from pgpool import _build

REPO = Path(__file__).resolve().parents[2]
EXTENSION_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def run_python(code: str, root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PGPOOL_")}
    environ.update(env, PYTHONPATH=str(root))
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=environ, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """A copy of the pure-Python package where pgpool.stats has a built "extension" recorded in the manifest."""
    root = tmp_path / "tree"
    shutil.copytree(REPO / "pgpool", root / "pgpool",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", _build.MANIFEST_NAME))
    # Not a loadable module: if the hook picks it, the import fails.
    (root / "pgpool" / f"stats{EXTENSION_SUFFIX}").write_bytes(b"not an extension module")
    digest = _build.hash_source(root / "pgpool" / "stats.py")
    (root / "pgpool" / _build.MANIFEST_NAME).write_text(
        json.dumps({"cython": "3.test", "modules": {"pgpool.stats": digest}}))
    return root


def test_matching_extension_is_the_one_loaded(package_copy):
    result = run_python("import pgpool.stats", package_copy)
    assert result.returncode != 0 and f"stats{EXTENSION_SUFFIX}" in result.stderr


def test_edited_source_runs_instead_of_the_stale_extension(package_copy):
    stats = package_copy / "pgpool" / "stats.py"
    stats.write_text(stats.read_text() + "\nEDITED_AFTER_THE_BUILD = True\n")
    result = run_python("import pgpool, pgpool.stats as s; print(s.EDITED_AFTER_THE_BUILD, s.__file__); "
                        "print(pgpool.describe_build())", package_copy)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"True {package_copy / 'pgpool' / 'stats.py'}"
    assert "StaleBuildWarning" in result.stderr and "pgpool.stats" in result.stderr
    assert "stale: the .py changed since the build" in result.stdout


def test_edited_pxd_makes_the_extension_stale(package_copy):
    (package_copy / "pgpool" / "stats.pxd").write_text("cdef class Histogram:\n    pass\n")
    result = run_python("import pgpool.stats as s; print(s.__file__)", package_copy)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("stats.py") and "StaleBuildWarning" in result.stderr


def test_extension_without_a_build_record_is_not_used(package_copy):
    (package_copy / "pgpool" / _build.MANIFEST_NAME).unlink()
    result = run_python("import pgpool.stats as s; print(s.__file__)", package_copy)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("stats.py")
    assert "no build record" in result.stderr


def test_extension_whose_source_was_removed_is_not_imported(package_copy):
    (package_copy / "pgpool" / "stats.py").unlink()
    result = run_python("import pgpool.stats", package_copy)
    assert result.returncode != 0 and "No module named 'pgpool.stats'" in result.stderr, result.stderr


def test_left_over_extension_of_a_module_off_the_list_is_not_used(package_copy):
    assert "pgpool.cli" not in _build.COMPILED_MODULES
    # cli.py imports the whole package (it hands the operator surfaces to App): without the
    # fixture's unloadable stats extension, so that only the cli extension is in question here.
    (package_copy / "pgpool" / f"stats{EXTENSION_SUFFIX}").unlink()
    (package_copy / "pgpool" / f"cli{EXTENSION_SUFFIX}").write_bytes(b"not an extension module")
    result = run_python("import pgpool.cli as c; print(c.__file__)", package_copy)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(package_copy / "pgpool" / "cli.py")


def test_pure_python_switch_skips_a_matching_extension(package_copy):
    result = run_python("import pgpool, pgpool.stats as s; print(s.__file__); print(pgpool.describe_build())",
                        package_copy, PGPOOL_PURE_PYTHON="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(package_copy / "pgpool" / "stats.py"),
                                          "pure Python (PGPOOL_PURE_PYTHON=1)"]
    assert "StaleBuildWarning" not in result.stderr


def test_choose_build_compares_the_recorded_hash(tmp_path):
    (tmp_path / "stats.py").write_text("X = 1\n")
    (tmp_path / f"stats{EXTENSION_SUFFIX}").write_bytes(b"")
    manifest = {"modules": {"pgpool.stats": _build.hash_source(tmp_path / "stats.py")}}
    assert _build.choose_build("pgpool.stats", tmp_path, manifest, {}) == (
        tmp_path / f"stats{EXTENSION_SUFFIX}", "compiled")
    assert _build.choose_build("pgpool.stats", tmp_path, manifest, {"PGPOOL_PURE_PYTHON": "1"})[0] is None
    (tmp_path / "stats.py").write_text("X = 2\n")
    assert _build.choose_build("pgpool.stats", tmp_path, manifest, {}) == (
        None, "stale: the .py changed since the build")
    assert _build.choose_build("pgpool.other", tmp_path, manifest, {}) == (None, "not compiled")


def test_version_names_the_build():
    environ = {k: v for k, v in os.environ.items() if k != "PGPOOL_PURE_PYTHON"}
    version = subprocess.run([sys.executable, "-m", "pgpool", "--version"], cwd=REPO, capture_output=True,
                             text=True, timeout=60, env={**environ, "PYTHONPATH": str(REPO)})
    pure = subprocess.run([sys.executable, "-m", "pgpool", "--version"], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**environ, "PYTHONPATH": str(REPO), "PGPOOL_PURE_PYTHON": "1"})
    assert version.returncode == 0 and pure.returncode == 0
    expected = run_python("import pgpool; print(pgpool.describe_build())", REPO).stdout.strip()
    assert version.stdout.split("\n")[0].startswith(f"pgpool {pgpool.__version__}, ")
    assert " ".join(version.stdout.split()) == f"pgpool {pgpool.__version__}, {expected}"
    assert expected.startswith(("compiled (Cython 3.", "pure Python", "partly compiled (Cython 3."))
    assert " ".join(pure.stdout.split()) in (f"pgpool {pgpool.__version__}, pure Python (PGPOOL_PURE_PYTHON=1)",
                                             f"pgpool {pgpool.__version__}, pure Python")


def test_modules_run_as_the_build_says():
    """What describe_build reports is what is loaded; under .ci/run, the build it was asked for."""
    import pgpool.client
    import pgpool.protocol.framing  # noqa: F401  (loaded to be inspected)

    loaded = {name: sys.modules[name].__spec__.origin for name in _build.COMPILED_MODULES if name in sys.modules}
    compiled = {name for name, origin in loaded.items() if origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))}
    assert {"pgpool.client", "pgpool.protocol.framing"} <= loaded.keys()
    build = pgpool.describe_build()
    if compiled == set(loaded):
        assert build.startswith("compiled (Cython 3.")
    elif not compiled:
        assert build.startswith("pure Python")
    else:
        assert build.startswith("partly compiled")
    expected = os.environ.get("PGPOOL_EXPECT_BUILD")
    if expected == "compiled":
        assert compiled == set(loaded), f"{build}: {loaded}"
    elif expected == "pure":
        assert not compiled, f"{build}: {loaded}"
    else:
        assert expected is None, f"PGPOOL_EXPECT_BUILD must be compiled or pure, not {expected!r}"


def pxd_classes(text: str) -> dict[str, set[str]]:
    """{class: attribute names} of the `cdef class` blocks of an augmenting .pxd."""
    classes: dict[str, set[str]] = {}
    current = None
    for line in text.splitlines():
        if match := re.match(r"cdef class (\w+)", line):
            current = classes.setdefault(match.group(1), set())
        elif current is not None and (match := re.match(r"\s+cdef (?:public |readonly )?[\w.]+ (\w+)\s*$", line)):
            current.add(match.group(1))
        elif line and not line[0].isspace():
            current = None
    return classes


# session.pxd types functions only.
@pytest.mark.parametrize("pxd", sorted(p for p in (REPO / "pgpool").rglob("*.pxd") if "cdef class" in p.read_text()),
                         ids=lambda p: p.name)
def test_pxd_declares_exactly_the_slots_of_each_class(pxd):
    """A compiled extension type has only the fields its .pxd declares: a slot added to the .py alone
    would raise AttributeError in the compiled build only."""
    tree = ast.parse(pxd.with_suffix(".py").read_text())
    slots = {node.name: set(ast.literal_eval(stmt.value))
             for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
             for stmt in node.body
             if isinstance(stmt, ast.Assign) and any(getattr(t, "id", "") == "__slots__" for t in stmt.targets)}
    declared = pxd_classes(pxd.read_text())
    assert declared, f"{pxd.name} declares no cdef class"
    for name, fields in declared.items():
        assert name in slots, f"{pxd.name}: class {name} has no __slots__ in the .py"
        assert fields == slots[name], (f"{pxd.name} vs {pxd.with_suffix('.py').name} {name}.__slots__: "
                                       f"only in .pxd {sorted(fields - slots[name])}, "
                                       f"only in .py {sorted(slots[name] - fields)}")
