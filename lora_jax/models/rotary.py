"""Rotary position embeddings (Su et al. 2021) in the rotate-half layout of Llama and GPT-NeoX.

A query or key vector at position p is rotated pairwise, dimension i with i + head_dim/2, by the
angle p * theta^(-2i / head_dim), so a query-key product depends on their positions only through
p_q - p_k. Tables are made in float32 (float64 stays float64), then cast to the compute dtype.
"""

import jax.numpy as jnp


def work_dtype(dtype):
  """Where tables, norms and softmax are computed: float32, or float64 for float64."""
  return jnp.float64 if dtype == jnp.float64 else jnp.float32


def tables(positions, head_dim: int, theta: float, dtype):
  """cos, sin of shape positions.shape + (head_dim,)."""
  work = work_dtype(dtype)
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=work) / head_dim))
  freqs = positions.astype(work)[..., None] * inv_freq
  angles = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def rotate_half(x):
  half = x.shape[-1] // 2
  return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply(x_BxTxHxK, cos_BxTxK, sin_BxTxK):
  """x rotated by its positions' tables (broadcast over the heads axis)."""
  cos, sin = cos_BxTxK[..., None, :], sin_BxTxK[..., None, :]
  return x_BxTxHxK * cos + rotate_half(x_BxTxHxK) * sin
