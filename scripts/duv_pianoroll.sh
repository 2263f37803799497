#!/usr/bin/env bash
# The README's DUV piano roll (scripts/duv_proof.sh draws it at its end): POP909_010, a pop song
# the proof holds out, made deadpan and humanised by the proof's classical base plus the pop
# adapter of the fold that left that song out (pop_010.lora), 9 seconds of it:
#
#   bash scripts/duv_pianoroll.sh [MODELS] [OUT] [PNG]   (defaults: checkpoints/duv_proof,
#                                                        runs/duv_proof, assets/duv_pianoroll.png)
#
# The humanised MIDI goes to OUT/POP909_010_humanised.mid. A few seconds on the 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

MODELS="${1:-checkpoints/duv_proof}"
OUT="${2:-runs/duv_proof}"
PNG="${3:-assets/duv_pianoroll.png}"
SONG=010  # configs/duv/proof.py:pop_010 held it out
PYTHON="${PYTHON:-python}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"

mkdir -p "$OUT" "$(dirname "$PNG")"
"$PYTHON" launch/humanize_midi.py --input=".cache/performances/pop909/POP909_$SONG.mid" --deadpan \
  --model="$MODELS/pop_$SONG.lora" --output="$OUT/POP909_${SONG}_humanised.mid" \
  --pianoroll="$PNG" --pianoroll_seconds=50,59
