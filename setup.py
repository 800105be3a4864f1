"""Optional compiled build: Cython 3 compiles the hot modules (pgpool/_build.py, COMPILED_MODULES) from their .py.

The .py files stay the source and ship in every install. Where Cython, a C compiler and the
Python headers are present, `pip install .` (and `pip install -e .`, in place) adds an extension
module per listed module and writes pgpool/_compiled.json: the SHA-256 of each source as
compiled, which the import hook compares with the .py at import time. Any failure (no compiler,
no headers, a module Cython rejects) skips that module with a warning: the install never fails
for it. PGPOOL_PURE_PYTHON_BUILD=1 skips the compiled build altogether. Everything else about
the package is in pyproject.toml.
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("_pgpool_build", ROOT / "pgpool" / "_build.py")
_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_build)

# Directives that keep Python semantics: annotations are documentation here, not C types (a
# `bytes` parameter must keep accepting a memoryview), and functions stay introspectable,
# bindable Python functions (binding).
DIRECTIVES = {"language_level": 3, "annotation_typing": False, "binding": True}


def warn(message: str) -> None:
    print(f"pgpool setup.py: {message}", file=sys.stderr)


def compiled_extensions() -> list[Extension]:
    if os.environ.get("PGPOOL_PURE_PYTHON_BUILD", "").strip().lower() in ("1", "true", "yes", "on"):
        warn("PGPOOL_PURE_PYTHON_BUILD is set: pure Python install")
        return []
    try:
        import Cython  # noqa: F401  (only the build needs it)
    except ImportError:
        warn("Cython is not installed: pure Python install")
        return []
    # optional: setuptools copies an in-place build only for the modules that did compile.
    return [Extension(name, [str(_build.source_path(name, Path("pgpool")))], optional=True)
            for name in _build.COMPILED_MODULES if _build.source_path(name, ROOT / "pgpool").is_file()]


class OptionalBuildExt(build_ext):
    """build_ext that cythonizes and compiles each module on its own and skips the ones that fail."""

    def run(self) -> None:
        self.built: dict[str, str] = {}
        self.cython_version = ""
        super().run()
        self.write_manifest()

    def build_extension(self, ext: Extension) -> None:
        source = ROOT / ext.sources[0]
        digest = _build.hash_source(source)   # the hash of exactly what Cython reads
        try:
            import Cython
            from Cython.Build import cythonize

            self.cython_version = Cython.__version__
            (generated,) = cythonize([Extension(ext.name, list(ext.sources), optional=True)],
                                     compiler_directives=DIRECTIVES, quiet=True, force=True,
                                     build_dir=str(Path(self.build_temp) / "cython"))
            ext.sources = generated.sources   # the .c file; ext stays setuptools' own Extension
            super().build_extension(ext)
        except Exception as error:   # no compiler, no headers, a construct Cython rejects: run the .py
            warn(f"{ext.name} not compiled ({type(error).__name__}: {error}); it runs as pure Python")
            self.remove_old_build(ext.name)
            return
        if _build.hash_source(source) != digest:   # edited while it compiled: no record, so the .py runs
            warn(f"{ext.name} changed during the build; it runs as pure Python until the next build")
            return
        self.built[ext.name] = digest

    def remove_old_build(self, name: str) -> None:
        """An extension of an earlier build must not ship (build/lib) or linger (in place) beside the .py.

        The import hook would ignore it anyway (no record in the manifest); this keeps it out of wheels.
        """
        old = [Path(self.get_ext_fullpath(name))]
        if self.inplace or getattr(self, "editable_mode", False):
            old.append(_build.find_extension(name, ROOT / "pgpool") or old[0])
        for path in old:
            path.unlink(missing_ok=True)

    def write_manifest(self) -> None:
        # Next to the extension files: in build_lib for a wheel, in the source tree for an
        # editable or --inplace build (setuptools copies extensions there, not other files).
        manifest = json.dumps({"cython": self.cython_version, "modules": self.built}, indent=1, sort_keys=True)
        targets = {Path(self.build_lib) / "pgpool"}
        if self.inplace or getattr(self, "editable_mode", False):
            targets.add(ROOT / "pgpool")
        for directory in targets:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / _build.MANIFEST_NAME).write_text(manifest + "\n")

    def get_outputs(self) -> list[str]:
        return [*super().get_outputs(), str(Path(self.build_lib) / "pgpool" / _build.MANIFEST_NAME)]


setup(ext_modules=compiled_extensions(), cmdclass={"build_ext": OptionalBuildExt})
