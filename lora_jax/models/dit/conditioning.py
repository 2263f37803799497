"""Stable Audio's number conditioning (`seconds_start`, `seconds_total`) and how it reaches the DiT.

`NumberConditioner` is the original's: clamp to [min_val, max_val], scale to [0, 1], then
`NumberEmbedder` (a learned Fourier embedding, [x, sin(2 pi x w), cos(2 pi x w)], and a Linear to
the conditioning width), one token per number. Module paths are the original's
(`embedder.embedding.0.weights`, `embedder.embedding.1`), so a conditioner's weights convert by
name (`lora_jax.interop.dit_convert.number_conditioner_to_params`).

`assemble` is the original's `get_conditioning_inputs` for the two kinds Stable Audio Open uses:
cross-attention inputs concatenated along the sequence, global inputs along the channels.
"""

import math
from typing import Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

EMBEDDER_FEATURES = 256  # the original NumberEmbedder's Fourier width (`dim`)


class LearnedPositionalEmbedding(nn.Module):
  """x [N] -> [N, 1 + features]: x, then sin and cos of 2 pi x w for learned w."""

  features: int = EMBEDDER_FEATURES

  @nn.compact
  def __call__(self, x_N):
    w = self.param("weights", nn.initializers.normal(1.0), (self.features // 2,))
    x_Nx1 = x_N[:, None]
    f = x_Nx1 * w[None, :] * 2 * math.pi
    return jnp.concatenate([x_Nx1, jnp.sin(f), jnp.cos(f)], axis=-1)


class NumberEmbedder(nn.Module):
  """`embedding.0` (Fourier) then `embedding.1` (Linear to `output_dim`)."""

  output_dim: int

  @nn.compact
  def __call__(self, x_N):
    h = LearnedPositionalEmbedding(name="embedding_0")(x_N)
    return nn.Dense(self.output_dim, name="embedding_1")(h)


class NumberConditioner(nn.Module):
  """Numbers [B] to (embeddings [B, 1, output_dim], mask [B, 1]), as the original."""

  output_dim: int
  min_val: float = 0.0
  max_val: float = 1.0

  @nn.compact
  def __call__(self, numbers_B):
    x = jnp.clip(jnp.asarray(numbers_B, jnp.float32), self.min_val, self.max_val)
    x = (x - self.min_val) / (self.max_val - self.min_val)
    embeds = NumberEmbedder(self.output_dim, name="embedder")(x)[:, None, :]
    return embeds, jnp.ones(embeds.shape[:2], jnp.float32)


def assemble(tensors: Mapping[str, jnp.ndarray], cross_attn_ids: Sequence[str],
             global_ids: Sequence[str]):
  """(cross_attn_cond [B, S, C] or None, global_embed [B, G] or None) from conditioner outputs
  ([B, S, C] or [B, C] each), in the order of the ids, as the original concatenates them."""
  missing = sorted((set(cross_attn_ids) | set(global_ids)) - set(tensors))
  if missing:
    raise KeyError(f"conditioning ids {missing} have no conditioner output "
                   f"(outputs: {sorted(tensors)})")
  cross = None
  if cross_attn_ids:
    parts = [tensors[k] if tensors[k].ndim == 3 else tensors[k][:, None] for k in cross_attn_ids]
    cross = jnp.concatenate(parts, axis=1)
  global_embed = None
  if global_ids:
    global_embed = jnp.concatenate([tensors[k] for k in global_ids], axis=-1)
    if global_embed.ndim == 3:
      global_embed = global_embed[:, 0]
  return cross, global_embed
