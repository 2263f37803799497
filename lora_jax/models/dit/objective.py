"""The v-objective Stable Audio trains its DiT with, as pure functions of given time and noise.

alpha = cos(pi t / 2), sigma = sin(pi t / 2); the model sees x_t = alpha x0 + sigma noise at time t
and is trained toward v = alpha noise - sigma x0 by mean squared error (over the valid positions
when a padding mask is given, as the original's masked MSE). Time and noise are arguments: the
caller draws them (a training step from its RNG, an evaluation from a fixed seed), so the same
function serves training and a held-out loss at fixed times and noise.
"""

from typing import Any, Callable

import jax.numpy as jnp


def alphas_sigmas(t_B):
  """(alpha, sigma) of the v-objective's cosine schedule at times t in [0, 1]."""
  return jnp.cos(t_B * jnp.pi / 2), jnp.sin(t_B * jnp.pi / 2)


def noised_and_target(x0_BxCxT, t_B, noise_BxCxT):
  """(x_t, v target) for clean latents x0 [B, C, T]."""
  alpha, sigma = (a[:, None, None].astype(x0_BxCxT.dtype) for a in alphas_sigmas(t_B))
  return alpha * x0_BxCxT + sigma * noise_BxCxT, alpha * noise_BxCxT - sigma * x0_BxCxT


def v_loss(model_fn: Callable[..., Any], x0_BxCxT, t_B, noise_BxCxT, cond: dict[str, Any],
           padding_mask_BxT=None):
  """Mean squared error of model_fn(x_t, t, **cond) against the v target (float32 scalar).

  `padding_mask_BxT` (True: real audio) restricts the mean to real positions, all channels.
  """
  x_t, target = noised_and_target(x0_BxCxT, t_B, noise_BxCxT)
  err = jnp.square(model_fn(x_t, t_B, **cond).astype(jnp.float32) - target.astype(jnp.float32))
  if padding_mask_BxT is None:
    return err.mean()
  mask = jnp.broadcast_to(padding_mask_BxT[:, None, :], err.shape).astype(jnp.float32)
  return (err * mask).sum() / mask.sum()  # no real position: NaN, as the original's mean
