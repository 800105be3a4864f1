#!/usr/bin/env bash
# Install what a fresh Debian/Ubuntu machine lacks to test and benchmark pgpool: the PostgreSQL
# server binaries (initdb, pg_ctl, psql, pgbench), PgBouncer, tmux, the distribution's Python with its
# venv module, and a project virtual environment `.venv` (made with /usr/bin/python3) holding
# pgpool with its dev extras. Safe to re-run: it only installs what is missing, and pip runs
# again only when pyproject.toml changed.
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
fi
