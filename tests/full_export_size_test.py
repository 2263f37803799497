"""A full fine-tune's exported params.safetensors records the model's size as the converters'
base files do, so export_torch / convert_torch read it back without a --config."""

import json
import pathlib

import numpy as np

from lora_jax import tree_paths
from lora_jax.interop import export, flax_weights, model_size
from lora_jax.models import transformer
from lora_jax.train import config as config_lib
from lora_jax.train import loop

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "music_lm.py")


def test_full_fine_tune_export_records_its_size_and_converts_without_a_config(tmp_path):
  config = config_lib.load(CONFIG, "tiny", {
      "training.type": "full", "model.n_heads": 2, "model.n_layers": 1, "training.steps": 2,
      "training.eval_every": 2, "ckpt.every_steps": 2, "ckpt.export": "final"})
  result = loop.train(config, str(tmp_path / "run"))
  meta = flax_weights.read_metadata(result.export_path)
  size = model_size.recorded(meta, "params.safetensors")
  assert size is not None and json.loads(meta["model_config"])["d_model"] == 32
  assert (size.vocab_size, size.d_model, size.n_heads, size.n_layers, size.d_ff, size.max_len) == \
      (32, 32, 2, 1, 64, 32)
  # The converters take that size: to PyTorch and back, no config given.
  torch_file, back = str(tmp_path / "full.safetensors"), str(tmp_path / "back.safetensors")
  export.export_base(result.export_path, None, [], [], torch_file, model_family="music_lm")
  export.convert_base(torch_file, back, None)
  abstract = transformer.abstract_params(size)
  a = tree_paths.flatten(flax_weights.load_params(result.export_path, abstract))
  b = tree_paths.flatten(flax_weights.load_params(back, abstract))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))
