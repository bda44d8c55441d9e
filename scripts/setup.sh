#!/usr/bin/env bash
# Install gbmr and its dependencies into the current Python environment.
# torch 2.13.0 goes first when torch is missing: on these machines it is the fast CPU build, whereas an
# open range would pull a multi-GB CUDA build. On a GPU box, install the torch build you want beforehand.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet torch==2.13.0
fi
"$PYTHON" -m pip install --quiet -e ".[dev,mario,smax]"  # smax adds ~12 s (jaxmarl, jax CPU)
