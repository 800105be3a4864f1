#!/usr/bin/env bash
# Run the test suite: install what is missing, then pytest from the repo root.
# Arguments go to pytest, e.g. `bash scripts/test.sh -q tests/integration`.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$(command -v python || command -v python3)}"

bash "${repo_root}/scripts/install.sh"
cd "${repo_root}"
exec "${python}" -m pytest "$@"
