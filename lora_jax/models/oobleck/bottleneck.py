"""The VAE bottleneck of stable-audio-tools (`VAEBottleneck`): the encoder's channels split in
half into a mean and a raw scale, standard deviation softplus(scale) + 1e-4.

`encode` of the original always samples; here the noise is an argument (drawn by the caller from
an explicit key) and the mean alone is the deterministic encoding.
"""

import jax
import jax.numpy as jnp

STDEV_FLOOR = 1e-4  # the original's `softplus(scale) + 1e-4`


def moments(h_Bx2LxT):
  """(mean, standard deviation) [B, L, T] from the encoder output [B, 2L, T] (mean first)."""
  mean, scale = jnp.split(h_Bx2LxT, 2, axis=1)
  return mean, jax.nn.softplus(scale) + STDEV_FLOOR


def sample(mean_BxLxT, stdev_BxLxT, noise_BxLxT):
  """mean + stdev * noise: the original's reparameterised draw, with the noise given."""
  return mean_BxLxT + stdev_BxLxT * noise_BxLxT


def kl(mean_BxLxT, stdev_BxLxT):
  """The original's KL term: sum over channels of mean^2 + var - log var - 1, averaged over batch
  and time (no factor 1/2, as the original)."""
  var = jnp.square(stdev_BxLxT)
  return jnp.mean(jnp.sum(jnp.square(mean_BxLxT) + var - jnp.log(var) - 1, axis=1))
