#!/usr/bin/env bash
# Downloads into wheels/ (or $WHEELS) what scripts/gpu_check.sh installs on a GPU machine whose image
# has torch, torchvision, typer, rich, tensorboard, matplotlib and joblib but not Hydra or pydantic, for
# Python 3.12 (or $PYTHON_VERSION). Run it where PyPI is reachable; carry the folder to the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-wheels}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
mkdir -p "$WHEELS"
# pyproject.toml's ranges; their dependencies such an image may lack too (PyYAML for omegaconf,
# cloudpickle for submitit), and pytest for tests/test_cuda.py
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" -d "$WHEELS" \
    "hydra-core>=1.3,<1.4" "omegaconf>=2.3,<2.4" "hydra-joblib-launcher>=1.2,<1.3" \
    "hydra-submitit-launcher>=1.2,<1.3" submitit google-crc32c PyYAML cloudpickle pytest pluggy iniconfig
# pydantic with what it pins (pydantic-core's exact version, annotated-types, typing-extensions, ...)
"$PYTHON" -m pip download --only-binary=:all: --python-version "$PYTHON_VERSION" -d "$WHEELS" "pydantic>=2"
# Hydra 1.3 pins this antlr runtime, published only as a source archive: built here, pure Python
"$PYTHON" -m pip wheel --no-deps antlr4-python3-runtime==4.9.3 -w "$WHEELS"
ls "$WHEELS"
