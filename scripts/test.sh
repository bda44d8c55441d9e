#!/usr/bin/env bash
# Run the test suite (set up first with scripts/setup.sh); extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-python3}" -m pytest -n 2 -q "$@"
