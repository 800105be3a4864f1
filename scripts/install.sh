#!/usr/bin/env bash
# Install what a fresh Debian/Ubuntu machine lacks to test and benchmark pgpool:
# the PostgreSQL server binaries (initdb, pg_ctl, psql, pgbench), PgBouncer, and
# pgpool itself with its dev extras. Safe to re-run: it only installs what is missing.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$(command -v python || command -v python3)}"

have_pg_server() {
    [[ -n "${PGPOOL_PG_BINDIR:-}" && -x "${PGPOOL_PG_BINDIR}/initdb" ]] \
        || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}
have_pgbouncer() {
    command -v pgbouncer >/dev/null || [[ -x /usr/sbin/pgbouncer ]]
}

if ! have_pg_server || ! have_pgbouncer; then
    if [[ ${EUID} -eq 0 ]]; then
        as_root=()
    elif command -v sudo >/dev/null; then
        as_root=(sudo)
    else
        echo "install.sh: PostgreSQL or PgBouncer is missing and we are not root (no sudo either)." >&2
        echo "Install them: apt-get install postgresql pgbouncer" >&2
        exit 1
    fi
    # The Debian package may create and start a cluster on port 5432 by itself. We leave it
    # alone: the tests and benchmarks start their own throwaway clusters on free ports.
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql pgbouncer
fi

cd "${repo_root}"
"${python}" -m pip install -e '.[dev]'
