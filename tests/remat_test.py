"""Rematerialised blocks (model.remat) train exactly as the plain model does.

What they save is not tested here: XLA:CPU's compiled plan keeps the same temporaries with or
without jax.checkpoint (a plain 8-layer MLP: 218.1 MB either way), so the saving can only be
measured on an accelerator."""

import jax
import numpy as np

from tests.train_step_test import build, flat, host_batches, run, tiny


def test_remat_trains_the_same():
  overrides = {"model.n_layers": 2, "model.dropout": 0.1, "lora.dropout": 0.1}
  plain = build(tiny(**overrides), jax.devices()[:1])
  remat = build(tiny(**overrides, **{"model.remat": True}), jax.devices()[:1])
  host = host_batches(plain.config, 2)
  # Dropout is drawn from the same keys in the recomputed forward pass, so the steps agree.
  state_p, out_p = run(plain, host)
  state_r, out_r = run(remat, host)
  for a, b in zip(out_p, out_r):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
  p, r = flat(jax.device_get(state_p.params)), flat(jax.device_get(state_r.params))
  for key in p:
    np.testing.assert_allclose(p[key], r[key], rtol=1e-5, atol=1e-7, err_msg=key)


