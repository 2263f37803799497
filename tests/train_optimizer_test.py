"""The optimiser: warm-up and decay, per-group learning rates, decay only on matrices."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lora_jax.train import optimizer
from lora_jax.train.config import OptConfig

OPT = OptConfig(learning_rate=1.0, warmup_steps=4, decay="cosine", final_lr_fraction=0.1,
                inv_gamma=1.0, inv_power=1.0, inv_warmup=0.0, ema_beta=0.0, ema_power=0.75,
                weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, clip_norm=1.0, grad_accum_steps=1,
                lr_groups=())


def test_warmup_then_decay():
  cosine = optimizer.schedule(OPT, 20)
  np.testing.assert_allclose([cosine(i) for i in (0, 2, 4)], [0.0, 0.5, 1.0], atol=1e-6)
  np.testing.assert_allclose(cosine(12), 0.1 + 0.9 * 0.5, atol=1e-6)  # halfway through decay
  np.testing.assert_allclose(cosine(20), 0.1, atol=1e-6)
  linear = optimizer.schedule(dataclasses.replace(OPT, decay="linear"), 20)
  np.testing.assert_allclose(linear(12), 0.55, atol=1e-6)
  constant = optimizer.schedule(dataclasses.replace(OPT, decay="constant", warmup_steps=0), 20)
  assert float(constant(0)) == float(constant(19)) == 1.0
  with pytest.raises(ValueError, match=r"opt.warmup_steps 30 must lie in \[0, 20\]"):
    optimizer.schedule(dataclasses.replace(OPT, warmup_steps=30), 20)


def params():
  return {"head": {"lora_A": jnp.ones((4, 2)), "lora_B": jnp.ones((2, 4))},
          "ln": {"scale": jnp.ones((4,))}}


def test_learning_rate_groups_and_decay_mask():
  config = dataclasses.replace(OPT, warmup_steps=0, decay="constant", weight_decay=0.5,
                               clip_norm=0.0, lr_groups=((r"lora_B$", 0.0),))
  p = params()
  tx, _ = optimizer.optimizer(config, 10, p)
  zero = jax.tree.map(jnp.zeros_like, p)
  updates, _ = tx.update(zero, tx.init(p), p)
  # Zero gradients leave only weight decay: on the 2-D lora_A, not on the 1-D scale, and the
  # lora_B group's zero multiplier leaves it untouched.
  np.testing.assert_allclose(updates["head"]["lora_A"], -0.5 * np.ones((4, 2)))
  np.testing.assert_array_equal(updates["head"]["lora_B"], np.zeros((2, 4)))
  np.testing.assert_array_equal(updates["ln"]["scale"], np.zeros(4))


def test_an_lr_group_matching_nothing_is_an_error():
  config = dataclasses.replace(OPT, lr_groups=((r"q_proj", 2.0),))
  with pytest.raises(ValueError, match=r"lr_groups rules \['q_proj'\] match no trainable"):
    optimizer.optimizer(config, 10, params())


def test_clipping_by_global_norm():
  config = dataclasses.replace(OPT, warmup_steps=0, decay="constant", clip_norm=1.0)
  tx, _ = optimizer.optimizer(config, 10, params())
  clipped = optax.clip_by_global_norm(1.0)
  big = jax.tree.map(lambda x: 100.0 * jnp.ones_like(x), params())
  assert float(optax.tree.norm(clipped.update(big, clipped.init(big))[0])) == pytest.approx(1.0)
  updates, _ = tx.update(big, tx.init(params()), params())
  assert np.isfinite(float(optax.tree.norm(updates)))
