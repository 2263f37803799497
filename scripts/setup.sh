#!/usr/bin/env bash
# Sets up a fresh machine for lora_jax: a virtual environment with the package, PyTorch (CPU, for
# interop and parity tests) and PEFT, plus the real data the tests and demos read offline.
#
#   bash scripts/setup.sh          (idempotent; a second run only checks)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
# Exactly torch 2.13.0: its CPU wheel is on disk here; any other version pulls a CUDA build.
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[torch,test,data]'
PYTHON=.venv/bin/python bash scripts/fetch_performances.sh .cache/performances
