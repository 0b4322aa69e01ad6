#!/usr/bin/env bash
# Downloads into wheels/ (or $WHEELS), emptied first so that no older wheel stands beside a newer one,
# what scripts/gpu_check.sh installs on a GPU machine whose image has torch, torchvision, typer, rich,
# tensorboard, matplotlib, scipy, joblib, PyYAML, cloudpickle and pytest but not Hydra, submitit or
# pydantic, for Python 3.12 (or $PYTHON_VERSION); and writes wheels/COMMIT, the commit id of this
# tree, for a copy of it that travels without .git. Run it where PyPI is reachable; carry the folder.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-wheels}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
rm -rf "$WHEELS"
mkdir -p "$WHEELS"
commit=$(git rev-parse HEAD)
git diff --quiet HEAD || commit="$commit (with uncommitted changes)"
echo "$commit" >"$WHEELS/COMMIT"
# pyproject.toml's ranges for what such an image lacks (omegaconf: the range hydra-core 1.3.x requires,
# as --no-deps does not read it); gpu_check.sh installs only what is missing
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" -d "$WHEELS" \
    "hydra-core>=1.3" "omegaconf>=2.2,<2.4" "hydra-joblib-launcher>=1.2" "hydra-submitit-launcher>=1.2" \
    submitit "google-crc32c>=1.5"
# pydantic with what it pins (pydantic-core's exact version, annotated-types, typing-inspection, ...)
"$PYTHON" -m pip download --only-binary=:all: --python-version "$PYTHON_VERSION" -d "$WHEELS" "pydantic>=2"
# Hydra 1.3 pins this antlr runtime, published only as a source archive: built here, pure Python
"$PYTHON" -m pip wheel --no-deps antlr4-python3-runtime==4.9.3 -w "$WHEELS"
ls "$WHEELS"
