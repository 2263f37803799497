"""ReLoRA in the duv family through the one loop, over a float and an NF4 base: the folds change
the base, the run learns and exports the merged model, as music_lm's does."""

import csv
import os
import pathlib

import numpy as np
import pytest

from lora_jax import families, tree_paths
from lora_jax.interop import flax_weights
from lora_jax.train import config as config_lib
from lora_jax.train import loop
from lora_jax.train import mesh as mesh_lib
from lora_jax.train import state as state_lib

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "duv" / "base.py")


@pytest.mark.parametrize("quantize", ["", "nf4"])
def test_duv_relora_learns_and_exports_the_merged_model(tmp_path, quantize):
  mapping = config_lib.load_config_dict(CONFIG, "tiny").to_dict()
  mapping.pop("duv")  # the DUV data group: this run uses the family's synthetic phrases
  mapping["model"].update(d_model=64, d_ff=128)  # inputs of 64: NF4 blocks fit
  mapping["training"].update(type="lora", quantize=quantize, steps=12, eval_every=6, patience=0,
                             relora_every=4, relora_warmup=1)
  mapping["data"].update(synthetic_examples=96, val_fraction=0.25)
  mapping["opt"].update(learning_rate=1e-2, warmup_steps=2)
  mapping["ckpt"].update(every_steps=6, export="final")
  config = config_lib.from_config_dict(mapping)
  result = loop.train(config, str(tmp_path))
  with open(os.path.join(tmp_path, "metrics.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  assert result.status == "finished" and result.export_path.endswith("params.safetensors")
  # Measured: 0.880 before training; after 12 steps 0.795 over NF4 (folds every 4 steps)
  assert result.best_val_loss < 0.95 * float(rows[0]["val_loss"]), (result.best_val_loss, rows[0])
  # The export is a whole duv model that differs from the base it started from.
  family = families.lookup("duv").make(config.model, "float32")
  abstract = state_lib.abstract_base(family)
  exported = tree_paths.flatten(flax_weights.load_params(result.export_path, abstract))
  if not quantize:  # only the adapted kernels moved away from the seed's base
    mesh = mesh_lib.make_mesh(config.mesh)
    base = tree_paths.flatten(state_lib.host_params(
        state_lib.setup(config, family, mesh).frozen.base))
    changed = [k for k in exported if not np.array_equal(exported[k], base[k])]
    assert changed and all(k[-1] == "kernel" for k in changed), changed
