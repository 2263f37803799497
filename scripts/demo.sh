#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the main job on its built-in default: the hierarchical style
# adapters demo on real music from the music21 corpus (about 2 minutes on 2 CPU cores).
#
#   bash scripts/demo.sh [extra flags for launch/demo.py, e.g. --config=configs/demo.py:full]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python launch/demo.py --workdir=runs/demo "$@"
