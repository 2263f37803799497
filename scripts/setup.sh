#!/usr/bin/env bash
# Sets up a fresh machine for lora_jax: a virtual environment with the package, PyTorch (CPU, for
# interop and parity tests) and PEFT, the compiled CPU attention kernel (g++ and Eigen from Debian's
# packages, installed here when missing) and the oneDNN bfloat16 matmul (libdnnl-dev), fluidsynth and a General MIDI soundfont (Debian's, for the
# rendered audio the audio analysis is measured on), Debian's chromium (the studio's GUI test), plus
# the real data the tests and demos read offline.
#
#   bash scripts/setup.sh          (idempotent; a second run only checks)
#   LORA_JAX_ACCELERATOR=cuda12 bash scripts/setup.sh    (an NVIDIA host: jax's CUDA 12 plugin)
#
# LORA_JAX_ACCELERATOR is cpu (the default), cuda12, cuda13 or tpu. On an accelerator host the
# matching jax plugin is installed at the version of jax already resolved, and the CPU attention
# kernel (and its g++/Eigen) is skipped: nothing there runs it.
set -euo pipefail
cd "$(dirname "$0")/.."

ACCELERATOR="${LORA_JAX_ACCELERATOR:-cpu}"
case "$ACCELERATOR" in
  cpu|cuda12|cuda13|tpu) ;;
  *) echo "setup: LORA_JAX_ACCELERATOR must be cpu, cuda12, cuda13 or tpu, not '$ACCELERATOR'" >&2
     exit 1 ;;
esac

PYTHON="${PYTHON:-python3}"
# A venv without pip is one an interrupted setup left half made: make it again.
if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  "$PYTHON" -m venv --clear .venv
fi
# Exactly torch 2.13.0: its CPU wheel is on disk here; any other version pulls a CUDA build.
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[torch,test,data,parity,audio,studio,demucs]'
# The original Stable Audio models and sampler for the parity tests, without their requirements
# (they pull torchaudio, torchvision and another torch build); the extra `parity` holds the few
# modules they import.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
  stable-audio-tools==0.0.19 k-diffusion==0.1.1.post1
# Audio to MIDI (lora_jax/audio/transcribe.py): basic-pitch's wheel ships its ONNX model; without
# its requirements, which pull TensorFlow (the extra `audio` holds what it imports).
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps basic-pitch==0.4.0
PYTHON=.venv/bin/python bash scripts/fetch_performances.sh .cache/performances
# Real recordings with annotated measures and known keys, the audio analysis's second truth set.
PYTHON=.venv/bin/python bash scripts/fetch_recordings.sh .cache/recordings

# Debian packages, installed when missing (as root, or with sudo that asks nothing). The first
# argument says what else would do when they cannot be installed here.
apt_install() {
  local otherwise="$1"
  shift
  (( $# )) || return 0
  local as_root=()
  [[ $(id -u) -eq 0 ]] || as_root=(sudo -n)
  if ! command -v apt-get >/dev/null || ! "${as_root[@]}" true 2>/dev/null; then
    echo "setup: install $* (Debian packages)$otherwise" >&2
    exit 1
  fi
  "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "$@" >/dev/null
}

# Audio analysis (lora_jax/audio) renders MIDI to WAV for its ground truth: fluidsynth and Debian's
# General MIDI soundfont, on every accelerator. The studio's GUI test (tests/studio_browser_test.py)
# drives Debian's chromium through Playwright's executable path (Playwright's own browser download
# is not reachable).
apt_missing=()
command -v fluidsynth >/dev/null || apt_missing+=(fluidsynth)
[[ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ]] || apt_missing+=(fluid-soundfont-gm)
command -v chromium >/dev/null || apt_missing+=(chromium)
apt_install "" "${apt_missing[@]}"

if [[ "$ACCELERATOR" != cpu ]]; then
  jax_version=$(.venv/bin/python -c 'import jax; print(jax.__version__)')
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    "jax[$ACCELERATOR]==$jax_version"
  echo "setup: jax $jax_version with the $ACCELERATOR plugin; the CPU attention kernel is not built"
  exit 0
fi

# The compiled CPU kernels (lora_jax/kernels): a C++ compiler and Eigen's headers for attention,
# and oneDNN (Debian's libdnnl-dev) for the bfloat16 matmul that bfloat16 dense layers use on CPUs
# with avx512_bf16 or AMX (without it they run XLA's dot, which computes bfloat16 as float32).
missing=()
command -v g++ >/dev/null || missing+=(g++)
if [[ -z "${EIGEN_INCLUDE_DIR:-}" && ! -f /usr/include/eigen3/Eigen/Core ]]; then
  missing+=(libeigen3-dev)
fi
apt_install ", or set CXX / EIGEN_INCLUDE_DIR" "${missing[@]}"
# oneDNN is optional: where it cannot be installed, the kernel build says it is skipped.
if [[ ! -f /usr/include/dnnl.hpp ]]; then
  (apt_install "" libdnnl-dev) || echo "setup: libdnnl-dev not installed; bfloat16 dense layers will run XLA's dot"
fi
.venv/bin/python -m lora_jax.kernels
