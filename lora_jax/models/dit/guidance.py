"""Classifier-free guidance for the diffusion transformer, as the original's forward does it.

The conditioned and unconditioned passes run as one batch: the unconditioned half sees zeros in
place of the cross-attention tokens (or the negative prompt's tokens, masked positions zeroed) and
of the prepended conditioning; the global embedding is the same in both halves. The output is
uncond + (cond - uncond) * scale, optionally rescaled toward the conditioned output's standard
deviation over channels (`scale_phi`). Guidance applies where sigma = sin(pi t / 2) lies in
`interval`; the original tests only the batch's first element, here each element is tested (the
same whenever a batch shares its time, as in sampling).
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp


def guided(apply_fn: Callable[..., Any], x_BxCxT, t_B, *, cfg_scale: float,
           cross_attn_cond=None, global_embed=None, prepend_cond=None,
           negative_cross_attn_cond=None, negative_cross_attn_mask=None, scale_phi: float = 0.0,
           interval: tuple[float, float] = (0.0, 1.0)):
  """apply_fn(x, t, cross_attn_cond=, global_embed=, prepend_cond=) with guidance `cfg_scale`."""
  cond = dict(cross_attn_cond=cross_attn_cond, global_embed=global_embed,
              prepend_cond=prepend_cond)
  if cfg_scale == 1.0 or (cross_attn_cond is None and prepend_cond is None):
    return apply_fn(x_BxCxT, t_B, **cond)
  twice = lambda a: None if a is None else jnp.concatenate([a, a], axis=0)
  batch = {"global_embed": twice(global_embed)}
  if cross_attn_cond is not None:
    null = jnp.zeros_like(cross_attn_cond)
    if negative_cross_attn_cond is not None:
      null = negative_cross_attn_cond
      if negative_cross_attn_mask is not None:
        null = jnp.where(negative_cross_attn_mask[..., None].astype(bool), null,
                         jnp.zeros_like(null))
    batch["cross_attn_cond"] = jnp.concatenate([cross_attn_cond, null], axis=0)
  if prepend_cond is not None:
    batch["prepend_cond"] = jnp.concatenate([prepend_cond, jnp.zeros_like(prepend_cond)], axis=0)
  out = apply_fn(twice(x_BxCxT), twice(t_B), **batch)
  cond_out, uncond_out = jnp.split(out, 2, axis=0)
  cfg_out = uncond_out + (cond_out - uncond_out) * cfg_scale
  if scale_phi != 0.0:
    # torch's std: unbiased, over the channel axis.
    std = lambda a: jnp.std(a, axis=1, keepdims=True, ddof=1)
    cfg_out = scale_phi * (cfg_out * (std(cond_out) / std(cfg_out))) + (1 - scale_phi) * cfg_out
  if tuple(interval) == (0.0, 1.0):  # every sigma is inside: no extra unguided pass
    return cfg_out
  sigma_B = jnp.sin(t_B * jnp.pi / 2)
  inside = ((interval[0] <= sigma_B) & (sigma_B <= interval[1]))[:, None, None]
  return jnp.where(inside, cfg_out, apply_fn(x_BxCxT, t_B, **cond))


def cfg_dropout(key, prob: float, cross_attn_cond=None, prepend_cond=None):
  """Training's conditioning dropout, as the original's forward: each row's cross-attention tokens
  (and, with an independent draw, its prepended conditioning) become zeros with probability
  `prob`, so the model also learns the unconditioned output guidance subtracts. The global
  embedding (the timing numbers) is kept, as in the original."""
  if not 0.0 <= prob < 1.0:
    raise ValueError(f"cfg dropout probability must be in [0, 1), got {prob}")
  cross_key, prepend_key = jax.random.split(key)
  out = []
  for k, cond in ((cross_key, cross_attn_cond), (prepend_key, prepend_cond)):
    if cond is None or prob == 0.0:
      out.append(cond)
      continue
    drop = jax.random.bernoulli(k, prob, (cond.shape[0],) + (1,) * (cond.ndim - 1))
    out.append(jnp.where(drop, jnp.zeros_like(cond), cond))
  return tuple(out)
