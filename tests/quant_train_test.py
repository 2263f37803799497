"""A LoRA run over an NF4 base on 8 fake devices: it learns, and resumes bit-exactly (the base is
re-quantised from the same float base at every start, never checkpointed)."""

import pathlib

import numpy as np
import pytest

from lora_jax import quant, tree_paths
from lora_jax.train import config as config_lib
from lora_jax.train import loop

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "music_lm.py")
# d_model 128: two NF4 blocks along each input, one per fsdp shard.
RUN = {"model.n_layers": 1, "model.d_model": 128, "model.d_ff": 256, "training.steps": 8,
       "training.eval_every": 4, "ckpt.every_steps": 4, "training.log_every": 2,
       "mesh.data": 4, "mesh.fsdp": 2, "training.quantize": "nf4"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  config = config_lib.load(CONFIG, "tiny", RUN)
  whole = str(tmp_path_factory.mktemp("whole"))
  parts = str(tmp_path_factory.mktemp("parts"))
  return {"whole": loop.train(config, whole),
          "stopped": loop.train(config, parts, stop_after=3),
          "resumed": loop.train(config, parts)}


def test_lora_over_an_nf4_base_learns(runs):
  result = runs["whole"]
  assert result.status == "finished" and result.step == 8
  assert result.best_val_loss < 0.8 * 3.4657, result.best_val_loss  # log(32): uniform guess


def test_resume_over_an_nf4_base_is_bit_exact(runs):
  whole, stopped, resumed = runs["whole"], runs["stopped"], runs["resumed"]
  assert stopped.status == "stopped" and stopped.step == 3
  assert resumed.status == "finished" and resumed.step == 8
  a, b = tree_paths.flatten(whole.params), tree_paths.flatten(resumed.params)
  assert a.keys() == b.keys()
  for k in a:
    assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k
  assert resumed.val_loss == whole.val_loss


def test_indivisible_blocks_fail_before_training(tmp_path):
  config = config_lib.load(CONFIG, "tiny", {**RUN, "mesh.data": 1, "mesh.fsdp": 8})
  with pytest.raises(quant.QuantShardingError, match="not divisible by 8"):
    loop.train(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
