"""float16 compute with dynamic loss scaling trains for real on CPU (float16-safe attention)."""

import csv
import os

from lora_jax.train import config as config_lib
from lora_jax.train import loop

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "music_lm.py")


def test_float16_lora_run_learns(tmp_path):
  config = config_lib.load(CONFIG, "tiny", {"training.precision": "float16"})
  result = loop.train(config, str(tmp_path))
  assert result.status == "finished"
  with open(tmp_path / "metrics.csv") as f:
    rows = list(csv.DictReader(f))
  initial = float(rows[0]["val_loss"])
  assert result.val_loss < 0.75 * initial, (initial, result.val_loss)
  assert all(r["skipped"] in ("", "0") for r in rows)
