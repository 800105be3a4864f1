#!/usr/bin/env bash
# Run the test suite: install what is missing (scripts/install.sh), then pytest with the
# project's virtual environment from the repo root. Arguments go to pytest, e.g.
# `bash scripts/test.sh -q tests/integration`. pytest's exit status is ours; 5 (no tests
# collected) is a failure like any other non-zero status.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

bash "${repo_root}/scripts/install.sh"
cd "${repo_root}"
# As `source .venv/bin/activate` would: tools installed in the venv (hadolint, mkdocs) are on PATH.
export VIRTUAL_ENV="${repo_root}/.venv" PATH="${repo_root}/.venv/bin:${PATH}"
exec "${repo_root}/.venv/bin/python" -m pytest "$@"
