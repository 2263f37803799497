"""Multi-head attention kernels shared by the models: the fused one, and a float16-safe one.

`jax.nn.dot_product_attention` differentiates float16 inputs with float32-accumulating dots, which
XLA:CPU does not implement ("precision F16_F16_F32 is not supported by dot_general on CPU"). For
float16 we spell attention out: float16 matmuls, the softmax in float32. Every other dtype takes the
fused kernel (cuDNN on GPU where it applies).
"""

import jax
import jax.numpy as jnp


def attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, *, mask=None, is_causal: bool = False):
  """Scaled dot-product attention over [batch, time, heads, head_dim] arrays."""
  if q_BxTxHxK.dtype != jnp.float16:
    return jax.nn.dot_product_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask=mask,
                                        is_causal=is_causal)
  t, s = q_BxTxHxK.shape[1], k_BxSxHxK.shape[1]
  scale = jnp.float16(1.0 / (q_BxTxHxK.shape[-1] ** 0.5))
  logits_BxHxTxS = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK * scale, k_BxSxHxK)
  logits_BxHxTxS = logits_BxHxTxS.astype(jnp.float32)
  keep = jnp.ones((t, s), bool)
  if is_causal:
    keep = jnp.tril(keep)
  if mask is not None:
    keep = keep & mask
  logits_BxHxTxS = jnp.where(keep, logits_BxHxTxS, jnp.finfo(jnp.float32).min)
  probs_BxHxTxS = jax.nn.softmax(logits_BxHxTxS, axis=-1).astype(jnp.float16)
  return jnp.einsum("bhts,bshk->bthk", probs_BxHxTxS, v_BxSxHxK)
