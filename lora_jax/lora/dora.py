"""DoRA (Liu et al. 2024): a learned per-output magnitude over the column-normalised W + s A B.

A DoRA module computes y = (x (W + s A B)) * (m / n) + b with n = ||W + s A B|| over each output
column of the Flax kernel [in, out]: the same numbers as PEFT's norm over dim 1 of torch's
[out, in] weight. As PEFT and the paper (section 4.3) do, n is a constant in the backward:
gradients reach m, A and B through the product, never through the norm.

Adapters add deltas to the base output; a DoRA adapter's delta at weight w is
    w * ((m/n - 1) (h W) + (m/n) s (h A) B)
where h is the adapter's (dropped-out) input. At w = 1 without dropout that is the DoRA layer
exactly; at w = 0 it adds exactly zero; with dropout h W is the base product of the dropped
input, as in PEFT. A merge folds the same delta into the kernel: W + w ((W + s A B) m/n - W).

The forward's norm never forms the [in, out] W + s A B:
    n_j^2 = ||W_j||^2 + 2 s (A^T W)_j . B_j + s^2 B_j^T (A^T A) B_j
"""

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST  # the norm is cheap (rank-sized products); keep it float32


def _squared_column_norms(w: jax.Array) -> jax.Array:
  # A contraction, not sum(w * w): no [in, out] intermediate even before XLA fuses.
  return jnp.einsum("io,io->o", w, w, precision=_HIGHEST)


def initial_magnitude(kernel: jax.Array) -> jax.Array:
  """m at initialisation: ||W|| per output column, so a fresh DoRA module is the base."""
  return jnp.sqrt(_squared_column_norms(kernel.astype(jnp.float32)))


def column_norm(kernel: jax.Array, a: jax.Array, b: jax.Array, scale: jax.Array) -> jax.Array:
  """||W + s A B|| per output column [out], in float32, without forming the [in, out] sum."""
  w, a, b = (t.astype(jnp.float32) for t in (kernel, a, b))
  s = jnp.asarray(scale, jnp.float32)
  cross_RxO = jnp.matmul(a.T, w, precision=_HIGHEST)  # A^T W
  gram_RxR = jnp.matmul(a.T, a, precision=_HIGHEST)
  quad_RxO = jnp.matmul(gram_RxR, b, precision=_HIGHEST)
  squared = (_squared_column_norms(w) + 2.0 * s * jnp.sum(cross_RxO * b, axis=0)
             + s * s * jnp.sum(quad_RxO * b, axis=0))
  # Rounding can push a (near-)zero column's square a hair below zero.
  return jnp.sqrt(jnp.maximum(squared, 0.0))


def merged_kernel(kernel: jax.Array, a: jax.Array, b: jax.Array, scale: jax.Array,
                  magnitude: jax.Array) -> jax.Array:
  """(W + s A B) * m / ||W + s A B||, in float32: the kernel a DoRA module computes with."""
  w, a, b = (t.astype(jnp.float32) for t in (kernel, a, b))
  v = w + jnp.asarray(scale, jnp.float32) * jnp.matmul(a, b, precision=_HIGHEST)
  return v * (magnitude.astype(jnp.float32) / jnp.linalg.norm(v, axis=0))
