"""ReLoRA with DoRA: a reset restarts the magnitudes at the folded kernels' column norms, so the
model's function is unchanged by the reset (before, the first reset failed: no base to take the
norms from)."""

import pathlib

import jax
import numpy as np
import pytest

from lora_jax import families, lora, tree_paths
from lora_jax.train import batches
from lora_jax.train import config as config_lib
from lora_jax.train import mesh as mesh_lib
from lora_jax.train import relora
from lora_jax.train import state as state_lib
from lora_jax.train import step as step_lib

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "music_lm.py")


@pytest.mark.parametrize("quantize", ["", "int8"])
def test_a_dora_reset_keeps_the_function_and_restarts_the_magnitudes(quantize):
  config = config_lib.load(CONFIG, "tiny", {
      "model.n_layers": 1, "mesh.data": 1, "training.relora_every": 3, "lora.use_dora": True,
      "training.quantize": quantize, "lora.target_modules": ("q_proj", "ff.in")})
  family = families.lookup("music_lm").make(config.model, "float32")
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
  setup = state_lib.setup(config, family, mesh)
  train_fn = step_lib.jit_train_step(setup.step_config, mesh, setup.state_shardings,
                                     setup.frozen_shardings)
  eval_fn = step_lib.jit_eval_step(setup.step_config, mesh, setup.state_shardings.params,
                                   setup.frozen_shardings)
  it = batches.BatchIterator(family.synthetic(4 * config.data.batch_size, 7),
                             config.data.batch_size, seed=3)
  host = [next(it)[0] for _ in range(4)]
  state, frozen = setup.state, setup.frozen
  for b in host[:3]:
    state, _ = train_fn(state, frozen, jax.device_put(batches.micro_batches(b, 1),
                                                      mesh_lib.batch_sharding(mesh, 1)))
  val = jax.device_put(host[-1], mesh_lib.batch_sharding(mesh))
  before = float(eval_fn(state.params, frozen, val)["loss"])
  state, base = relora.jit_reset(config, setup)(state, frozen.base)
  frozen = frozen.replace(base=base)
  after = float(eval_fn(state.params, frozen, val)["loss"])
  # int8 re-rounds the folded kernels, a float base does not change the function at all.
  np.testing.assert_allclose(after, before, rtol=1e-5 if not quantize else 1e-2)
  kernels = tree_paths.flatten(lora.merge(base, []))  # dequantised where quantised
  for keys, m in lora.Adapter(state.params, frozen.scales).magnitudes().items():
    norms = np.linalg.norm(np.asarray(kernels[keys + ("kernel",)], np.float64), axis=0)
    np.testing.assert_allclose(np.asarray(m), norms, rtol=1e-2 if quantize else 1e-5)
