"""Which build of the data plane runs: Cython extension modules compiled from the .py files, or the .py files.

Owns the list of modules setup.py compiles, the manifest it writes beside them (the SHA-256 of
each source as compiled: the .py and its augmenting .pxd, if any), the import hook that picks, per module, the extension or the .py,
and the one-line description `pgpool --version` and the startup log print. An extension is used
only when the .py beside it still has the hash it was built from: a developer who edits a .py
gets that .py, with a StaleBuildWarning, never the old compiled code. PGPOOL_PURE_PYTHON=1 turns
the extensions off. It must not import anything from pgpool: pgpool/__init__ installs the hook
before any other module loads, and setup.py loads this file on its own.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

# The hot path, as py-spy shows it under pgbench (docs/benchmarks.md, "Compiled hot path").
# A module listed here but missing from the tree is skipped by setup.py and by the hook.
COMPILED_MODULES = (
    "pgpool.protocol.framing",
    "pgpool.protocol.messages",
    "pgpool.protocol.link",
    "pgpool.client",
    "pgpool.server",
    "pgpool.pool",
    "pgpool.prepared",
    "pgpool.params",
    "pgpool.session",
    "pgpool.clientsession",
    "pgpool.stats",
)
MANIFEST_NAME = "_compiled.json"
PURE_PYTHON_ENV = "PGPOOL_PURE_PYTHON"
PACKAGE_DIR = Path(__file__).resolve().parent


class StaleBuildWarning(RuntimeWarning):
    """A compiled module was built from a different source than the .py beside it; the .py runs."""


def source_path(name: str, package_dir: Path = PACKAGE_DIR) -> Path:
    """pgpool.protocol.framing -> <package_dir>/protocol/framing.py"""
    return package_dir.joinpath(*name.split(".")[1:]).with_suffix(".py")


def hash_source(path: Path) -> str:
    """SHA-256 of what a module is compiled from: its .py and, if there is one, the .pxd that types it."""
    digest = hashlib.sha256(path.read_bytes())
    declarations = path.with_suffix(".pxd")
    if declarations.is_file():
        digest.update(b"\0pxd\0" + declarations.read_bytes())
    return digest.hexdigest()


def find_extension(name: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The extension module file for `name` built for this interpreter, if there is one."""
    source = source_path(name, package_dir)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = source.with_name(source.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def read_manifest(package_dir: Path = PACKAGE_DIR) -> dict:
    """{"cython": version, "modules": {name: sha256 of the source compiled}}; {} when there is none."""
    try:
        manifest = json.loads((package_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("modules"), dict) else {}


def pure_python_requested(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    return environ.get(PURE_PYTHON_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def choose_build(name: str, package_dir: Path = PACKAGE_DIR, manifest: dict | None = None,
                 environ: dict[str, str] | os._Environ = os.environ) -> tuple[Path | None, str]:
    """(extension to load or None for the .py, why). The only place that decides."""
    extension = find_extension(name, package_dir)
    if extension is None:
        return None, "not compiled"
    if pure_python_requested(environ):
        return None, f"{PURE_PYTHON_ENV}=1"
    source = source_path(name, package_dir)
    if not source.is_file():   # every install ships the .py: an extension without one is left over
        return None, "stale: its .py is gone"
    built_from = (read_manifest(package_dir) if manifest is None else manifest).get("modules", {}).get(name)
    if built_from is None:
        return None, "stale: no build record for the compiled module"
    if built_from != hash_source(source):
        return None, "stale: the .py changed since the build"
    return extension, "compiled"


class BuildFinder(importlib.abc.MetaPathFinder):
    """Every pgpool module that has an extension file beside it loads from the file choose_build picks.

    Not only COMPILED_MODULES: an extension left over from an earlier build (a module taken off
    the list, a .py deleted) would otherwise be found by Python's own finder, which prefers
    extensions to .py files.
    """

    def find_spec(self, fullname: str, path=None, target=None):
        if not fullname.startswith("pgpool.") or find_extension(fullname) is None:
            return None   # nothing compiled to choose from: Python's own import
        source = source_path(fullname)
        extension, why = choose_build(fullname)
        if extension is not None:
            loader = importlib.machinery.ExtensionFileLoader(fullname, str(extension))
            return importlib.util.spec_from_file_location(fullname, extension, loader=loader)
        if not source.is_file():
            raise ModuleNotFoundError(f"No module named {fullname!r} (a compiled copy is left over from an "
                                      f"earlier build; its .py is gone)", name=fullname)
        if why.startswith("stale"):
            warnings.warn(f"{fullname}: compiled module ignored ({why}); running {source}. "
                          "Rebuild with scripts/install.sh (or pip install .) to run compiled again.",
                          StaleBuildWarning, stacklevel=2)
        return importlib.util.spec_from_file_location(fullname, source)


FINDER = BuildFinder()


def install_finder() -> None:
    if FINDER not in sys.meta_path:
        sys.meta_path.insert(0, FINDER)


def is_compiled(name: str) -> bool:
    """Whether module `name` runs compiled: as loaded if it is imported, else as it would load."""
    module = sys.modules.get(name)
    if module is not None:
        origin = getattr(getattr(module, "__spec__", None), "origin", None) or ""
        return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    return choose_build(name)[0] is not None


def describe_build() -> str:
    """"compiled (Cython 3.0.10)", "pure Python", or "partly compiled (...)" with the reasons."""
    present = [name for name in COMPILED_MODULES if source_path(name).is_file()]
    compiled = [name for name in present if is_compiled(name)]
    cython = read_manifest().get("cython", "?")
    if present and len(compiled) == len(present):
        return f"compiled (Cython {cython})"
    reasons = sorted({choose_build(name)[1] for name in present if name not in compiled})
    if not compiled:
        if pure_python_requested():
            return f"pure Python ({PURE_PYTHON_ENV}=1)"
        return "pure Python" if reasons in ([], ["not compiled"]) else f"pure Python ({'; '.join(reasons)})"
    pure = ", ".join(name for name in present if name not in compiled)
    return (f"partly compiled (Cython {cython}: {len(compiled)} of {len(present)} modules; "
            f"pure Python: {pure}: {'; '.join(reasons)})")

