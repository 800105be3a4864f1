#!/usr/bin/env bash
# The README's first command: install what is missing (scripts/install.sh), then burst a
# Prefect-like workload at a throwaway Postgres directly, through pgpool and through PgBouncer,
# print the comparison and write reports/demo-<timestamp>/.
# Arguments go to `python -m benchmarks.demo` (try --help; --dsn NAME=DSN bursts your own target).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

bash "${repo_root}/scripts/install.sh"
cd "${repo_root}"
# As `source .venv/bin/activate` would: tools installed in the venv (hadolint, mkdocs) are on PATH.
export VIRTUAL_ENV="${repo_root}/.venv" PATH="${repo_root}/.venv/bin:${PATH}"
# exec: Ctrl-C and SIGTERM reach the demo itself, which stops everything it started.
exec "${repo_root}/.venv/bin/python" -m benchmarks.demo "$@"
