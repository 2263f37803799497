"""The dit family on the shared loop: LoRA lowers the held-out v-loss, full fine-tuning runs,
multiplier 0 is the base model bit for bit (also jitted, where the widening fold would otherwise
change the summation), and a module dropped by module dropout adds exactly nothing."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax import lora
from lora_jax.families import dit as dit_family
from lora_jax.train import config as config_lib
from lora_jax.train import loop

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "dit.py")


def _model_and_batch():
  config = config_lib.load(CONFIG, "tiny")
  family = dit_family.make(config.model, "float32")
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape) * 0.2, a.dtype),
                        jax.eval_shape(lambda k: family.model.init(k, *family.init_args())
                                       ["params"], jax.random.key(0)))
  data = family.synthetic(4, 0)
  data["latents"] = np.tile(data["latents"], (1, 1, 4))  # 64 frames: enough tokens to fold
  batch = family.prepare({k: jnp.asarray(v) for k, v in data.items()}, jax.random.key(1))
  targets = lora.resolve(config.lora, params)
  adapter = lora.init_adapter(targets, config.lora, jax.random.key(2))
  adapter = adapter.replace(params=jax.tree.map(lambda a: a + 0.05, adapter.params))
  return family, params, family.model_args(batch), adapter


def test_multiplier_zero_is_the_base_bit_for_bit_and_one_moves_it():
  family, params, args, adapter = _model_and_batch()
  base = jax.jit(lambda p: family.model.apply({"params": p}, *args))(params)
  zero = jax.jit(lambda p: lora.apply(family.model, p, [lora.Active(adapter, 0.0)], *args))(
      params)
  assert base.tobytes() == zero.tobytes()
  weighted = jax.jit(lambda p, w: lora.apply(family.model, p, [lora.Active(adapter, w)], *args))
  assert float(jnp.abs(weighted(params, jnp.float32(1.0)) - base).max()) > 1e-3


def test_a_module_dropped_by_module_dropout_adds_nothing():
  family, params, args, adapter = _model_and_batch()
  base = family.model.apply({"params": params}, *args)
  dropped = lora.apply(family.model, params, [lora.Active(adapter, 1.0, module_dropout=0.999)],
                       *args, rng=jax.random.key(3))
  assert np.asarray(base).tobytes() == np.asarray(dropped).tobytes()
  kept = lora.apply(family.model, params, [lora.Active(adapter, 1.0, module_dropout=0.001)],
                    *args, rng=jax.random.key(3))
  assert float(jnp.abs(kept - base).max()) > 1e-3


def test_lora_lowers_the_held_out_denoising_loss_and_full_fine_tuning_runs(tmp_path):
  result = loop.train(config_lib.load(CONFIG, "tiny"), str(tmp_path / "lora"))
  rows = (tmp_path / "lora" / "metrics.csv").read_text().splitlines()
  val = rows[0].split(",").index("val_loss")
  untrained = float(rows[1].split(",")[val])
  assert result.best_val_loss < 0.9 * untrained, (untrained, result.best_val_loss)
  full = loop.train(config_lib.load(CONFIG, "tiny_full", {"training.steps": 2}),
                    str(tmp_path / "full"))
  assert full.export_path.endswith("params.safetensors")
