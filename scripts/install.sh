#!/usr/bin/env bash
# Install what a fresh Debian/Ubuntu machine lacks to test and benchmark pgpool: the PostgreSQL
# server binaries (initdb, pg_ctl, psql, pgbench), PgBouncer, tmux, the distribution's Python with its
# venv module, and a project virtual environment `.venv` (made with /usr/bin/python3) holding
# pgpool with its dev extras, with the hot modules compiled by Cython (setup.py; the headers,
# python3-dev, and a C compiler are installed for that). Safe to re-run: it only installs what is
# missing, pip runs again only when pyproject.toml changed, and the compiled modules are rebuilt
# when their sources changed.
#
# The distribution's Python refuses `pip install` into itself (PEP 668, "externally-managed-
# environment"), so everything Python goes into .venv; scripts/demo.sh, scripts/test.sh and
# .ci/run run .venv/bin/python. PGPOOL_BASE_PYTHON=/path/to/python3 builds the venv from
# another interpreter (3.11 or newer).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${repo_root}/.venv"
base_python="${PGPOOL_BASE_PYTHON:-/usr/bin/python3}"

have_pg_server() {
    [[ -n "${PGPOOL_PG_BINDIR:-}" && -x "${PGPOOL_PG_BINDIR}/initdb" ]] \
        || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}
have_pgbouncer() {
    command -v pgbouncer >/dev/null || [[ -x /usr/sbin/pgbouncer ]]
}
have_python_headers() {
    # The optional compiled build (setup.py, Cython) needs Python.h and a C compiler; without them
    # pgpool installs and runs as pure Python.
    [[ -x "${base_python}" ]] && "${base_python}" -c \
        'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'
}
have_c_compiler() {
    command -v cc >/dev/null || command -v gcc >/dev/null
}
have_venv_module() {
    # Debian ships venv without ensurepip unless python3-venv is installed; both are needed.
    [[ -x "${base_python}" ]] && "${base_python}" -c 'import ensurepip, venv' 2>/dev/null
}

missing=()
have_pg_server || missing+=(postgresql)
have_pgbouncer || missing+=(pgbouncer)
command -v tmux >/dev/null || missing+=(tmux)   # tests drive `pgpool top` in a real terminal
if [[ ! -x "${venv}/bin/python" ]] && ! have_venv_module; then
    if [[ -n "${PGPOOL_BASE_PYTHON:-}" ]]; then
        echo "install.sh: ${base_python} cannot create a virtual environment (python -m venv)." >&2
        exit 1
    fi
    missing+=(python3 python3-venv)
fi
if [[ "${base_python}" == /usr/bin/python3 ]]; then   # the distribution's Python: its headers are a package
    have_python_headers || missing+=(python3-dev)
fi
have_c_compiler || missing+=(gcc)

if (( ${#missing[@]} )); then
    if [[ ${EUID} -eq 0 ]]; then
        as_root=()
    elif command -v sudo >/dev/null; then
        as_root=(sudo)
    else
        echo "install.sh: missing ${missing[*]} and we are not root (no sudo either)." >&2
        echo "Install them: apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "install.sh: apt-get install ${missing[*]}"
    # The Debian postgresql package may create and start a cluster on port 5432 by itself. We
    # leave it alone: the tests and benchmarks start their own throwaway clusters on free ports.
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

if ! "${venv}/bin/python" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    echo "install.sh: creating ${venv} with ${base_python} ($("${base_python}" --version 2>&1))"
    rm -rf "${venv}"
    "${base_python}" -m venv "${venv}"
fi

# pip runs only when pyproject.toml (the dependency list) changed since the last install.
stamp="${venv}/.pgpool-install-stamp"
wanted="$(sha256sum "${repo_root}/pyproject.toml" | cut -d' ' -f1)"
if [[ ! -f "${stamp}" || "$(cat "${stamp}")" != "${wanted}" ]]; then
    cd "${repo_root}"
    "${venv}/bin/python" -m pip install --disable-pip-version-check -e '.[dev]'
    echo "${wanted}" > "${stamp}"
    rm -f "${venv}/.pgpool-build-stamp"
fi

# The editable install compiles the hot modules in place (setup.py). When one of their .py files
# changes, the import hook runs that .py (with a StaleBuildWarning) until the next build: build
# again here, once per change of the sources (a module Cython or the compiler rejects is not
# retried on every run), unless PGPOOL_PURE_PYTHON=1 says pure Python is wanted anyway.
build_stamp="${venv}/.pgpool-build-stamp"
sources_hash="$(cd "${repo_root}" && find setup.py pgpool -name '*.py' -o -name '*.pxd' | sort | xargs cat | sha256sum \
    | cut -d' ' -f1)"
if [[ -z "${PGPOOL_PURE_PYTHON:-}" && "$(cat "${build_stamp}" 2>/dev/null)" != "${sources_hash}" ]]; then
    build="$(cd "${repo_root}" && "${venv}/bin/python" -c 'import pgpool; print(pgpool.describe_build())')"
    if [[ "${build}" != compiled* ]]; then
        echo "install.sh: ${build}; compiling again (pip install -e .)"
        (cd "${repo_root}" && "${venv}/bin/python" -m pip install --disable-pip-version-check --no-deps -q -e .) \
            || echo "install.sh: the compiled build failed; pure Python runs" >&2
        echo "install.sh: $(cd "${repo_root}" && "${venv}/bin/python" -c 'import pgpool; print(pgpool.describe_build())')"
    fi
    echo "${sources_hash}" > "${build_stamp}"
fi
