#!/usr/bin/env bash
# The real launcher on a GPU: bfloat16 LoRA training (cuDNN attention), resume, float32 (XLA).
# bash bench/gpu_train_check.sh   (writes /tmp/bf16, /tmp/f32; docs/accelerators.md has a run)
set -uo pipefail
cd "$(dirname "$0")/.."
common=(--config=configs/music_lm.py:tiny --config.model.vocab_size=512 --config.model.d_model=512
  --config.model.n_heads=8 --config.model.n_layers=4 --config.model.d_ff=2048
  --config.model.max_len=512 --config.model.seq_len=512 --config.data.synthetic_examples=2048
  --config.data.batch_size=32 --config.data.eval_batch_size=32 --config.opt.learning_rate=3e-3
  --config.training.eval_every=50 --config.ckpt.every_steps=50)
t0=$(date +%s.%N)
python3 launch/train.py "${common[@]}" --config.training.precision=bfloat16 \
  --config.training.steps=200 --workdir=/tmp/bf16 2>&1 | grep -E "attention:|mesh|resumed|exported|error|Error|Traceback" | head -20
t1=$(date +%s.%N)
echo "bf16 run wall: $(python3 -c "print(round($t1-$t0,1))") s"
cat /tmp/bf16/metrics.csv | cut -d, -f1-6 | awk 'NR==1 || NR%25==2'
echo "--- same command again (resume from the last checkpoint)"
python3 launch/train.py "${common[@]}" --config.training.precision=bfloat16 \
  --config.training.steps=200 --workdir=/tmp/bf16 2>&1 | grep -E "attention:|resumed|exported|error|Traceback" | head
echo "exit: $?"; cat /tmp/bf16/status.json; echo
echo "--- float32 (XLA attention on GPU)"
python3 launch/train.py "${common[@]}" --config.training.precision=float32 \
  --config.training.steps=20 --workdir=/tmp/f32 2>&1 | grep -E "attention:|exported|error|Traceback" | head
tail -2 /tmp/f32/metrics.csv | cut -d, -f1-6

