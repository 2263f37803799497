"""Multi-head attention kernels shared by the models.

Three paths, picked by `attention`:
- causal self-attention without a mask, on CPU: `causal_attention`, a blockwise kernel with its own
  gradient (below). It is what the music transformer trains with.
- float16 otherwise (masked, or off CPU): spelled out, float16 matmuls and the softmax in float32.
  `jax.nn.dot_product_attention` differentiates float16 inputs with float32-accumulating dots, which
  XLA:CPU does not implement ("precision F16_F16_F32 is not supported by dot_general on CPU").
- everything else: `jax.nn.dot_product_attention` (cuDNN on GPU where it applies).

Why a kernel of our own on CPU (measured by bench/lora_step_profile.py, 4 layers, d=256, T=512,
batch 8): differentiating the fused kernel, XLA:CPU saved the softmax probabilities for the
backward pass in a transposed copy written inside the softmax fusion, transposed the score gradient
the same way, and reduced dP * P over the [B, H, T, T] scores; those fusions took most of the
attention's 150-180 ms per layer, forward and backward (torch's SDPA: 56-70 ms; this kernel:
74-82 ms). `causal_attention` keeps only q, k, v, the
output and the log-sum-exp (flash attention's residuals), recomputes the probabilities in the
backward pass, takes the softmax gradient from the cheaper sum(dO * O) over the head dimension,
and works in query blocks that skip the key blocks the causal mask hides (10 of 16 block pairs at
T=512).
"""

import jax
import jax.numpy as jnp

BLOCK = 128  # queries per block of the causal kernel


def attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, *, mask=None, is_causal: bool = False):
  """Scaled dot-product attention over [batch, time, heads, head_dim] arrays."""
  same_length = q_BxTxHxK.shape[1] == k_BxSxHxK.shape[1]
  if is_causal and mask is None and same_length and jax.default_backend() == "cpu":
    return causal_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK)
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


def _blocks(t: int) -> list[tuple[int, int]]:
  return [(s, min(s + BLOCK, t)) for s in range(0, t, BLOCK)]


def _heads_first(x_BxTxHxK):
  return jnp.swapaxes(x_BxTxHxK, 1, 2)


def _probs(q_BxHxQxK, k_BxHxSxK, start: int, lse_BxHxQ=None):
  """Causal softmax probabilities (float32) of queries start.. over keys 0..; and the lse."""
  scale = 1.0 / (q_BxHxQxK.shape[-1] ** 0.5)
  n_q, n_k = q_BxHxQxK.shape[2], k_BxHxSxK.shape[2]
  logits_BxHxQxS = jnp.einsum("bhqk,bhsk->bhqs", q_BxHxQxK * jnp.asarray(scale, q_BxHxQxK.dtype),
                              k_BxHxSxK).astype(jnp.float32)
  keep_QxS = jnp.arange(n_k)[None, :] <= start + jnp.arange(n_q)[:, None]
  logits_BxHxQxS = jnp.where(keep_QxS, logits_BxHxQxS, -jnp.inf)
  if lse_BxHxQ is None:  # the forward: normalise as a softmax does, keep the lse for the backward
    max_BxHxQ = jnp.max(logits_BxHxQxS, axis=-1)  # finite: every query sees its own key
    exp_BxHxQxS = jnp.exp(logits_BxHxQxS - max_BxHxQ[..., None])
    sum_BxHxQ = jnp.sum(exp_BxHxQxS, axis=-1)
    return exp_BxHxQxS / sum_BxHxQ[..., None], max_BxHxQ + jnp.log(sum_BxHxQ)
  return jnp.exp(logits_BxHxQxS - lse_BxHxQ[..., None]), lse_BxHxQ


def _causal_fwd(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK):
  q_BxHxTxK, k_BxHxTxK, v_BxHxTxK = map(_heads_first, (q_BxTxHxK, k_BxTxHxK, v_BxTxHxK))
  outs, lses = [], []
  for start, stop in _blocks(q_BxHxTxK.shape[2]):
    probs_BxHxQxS, lse_BxHxQ = _probs(q_BxHxTxK[:, :, start:stop], k_BxHxTxK[:, :, :stop], start)
    outs.append(jnp.einsum("bhqs,bhsk->bhqk", probs_BxHxQxS.astype(v_BxHxTxK.dtype),
                           v_BxHxTxK[:, :, :stop]))
    lses.append(lse_BxHxQ)
  out_BxHxTxK = jnp.concatenate(outs, axis=2)
  return _heads_first(out_BxHxTxK), (q_BxHxTxK, k_BxHxTxK, v_BxHxTxK, out_BxHxTxK,
                                     jnp.concatenate(lses, axis=-1))


def _causal_bwd(residuals, dout_BxTxHxK):
  q_BxHxTxK, k_BxHxTxK, v_BxHxTxK, out_BxHxTxK, lse_BxHxT = residuals
  dout_BxHxTxK = _heads_first(dout_BxTxHxK)
  dtype = q_BxHxTxK.dtype
  acc = None if dtype == jnp.float16 else jnp.float32  # XLA:CPU has no f16 x f16 -> f32 dot
  scale = 1.0 / (q_BxHxTxK.shape[-1] ** 0.5)
  # sum_s dP * P over the keys equals sum_k dO * O over the head dimension: [B, H, T], not T x T.
  delta_BxHxT = jnp.sum(dout_BxHxTxK.astype(jnp.float32) * out_BxHxTxK.astype(jnp.float32), -1)
  dqs = []
  dk_BxHxTxK = jnp.zeros(k_BxHxTxK.shape, jnp.float32)
  dv_BxHxTxK = jnp.zeros(v_BxHxTxK.shape, jnp.float32)
  for start, stop in _blocks(q_BxHxTxK.shape[2]):
    q_BxHxQxK, dout_BxHxQxK = q_BxHxTxK[:, :, start:stop], dout_BxHxTxK[:, :, start:stop]
    k_BxHxSxK, v_BxHxSxK = k_BxHxTxK[:, :, :stop], v_BxHxTxK[:, :, :stop]
    probs_BxHxQxS, _ = _probs(q_BxHxQxK, k_BxHxSxK, start, lse_BxHxT[..., start:stop])
    dv = jnp.einsum("bhqs,bhqk->bhsk", probs_BxHxQxS.astype(dtype), dout_BxHxQxK,
                    preferred_element_type=acc)
    dprobs_BxHxQxS = jnp.einsum("bhqk,bhsk->bhqs", dout_BxHxQxK, v_BxHxSxK,
                                preferred_element_type=acc).astype(jnp.float32)
    dlogits_BxHxQxS = (probs_BxHxQxS * (dprobs_BxHxQxS - delta_BxHxT[..., start:stop, None])
                       * scale).astype(dtype)
    dqs.append(jnp.einsum("bhqs,bhsk->bhqk", dlogits_BxHxQxS, k_BxHxSxK,
                          preferred_element_type=acc))
    dk = jnp.einsum("bhqs,bhqk->bhsk", dlogits_BxHxQxS, q_BxHxQxK, preferred_element_type=acc)
    dk_BxHxTxK = dk_BxHxTxK.at[:, :, :stop].add(dk)
    dv_BxHxTxK = dv_BxHxTxK.at[:, :, :stop].add(dv)
  dq_BxHxTxK = jnp.concatenate(dqs, axis=2)
  return (_heads_first(dq_BxHxTxK).astype(dtype), _heads_first(dk_BxHxTxK).astype(dtype),
          _heads_first(dv_BxHxTxK).astype(dtype))


@jax.custom_vjp
def causal_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK):
  """Causal self-attention, blockwise over queries, with a flash-style gradient (see above)."""
  return _causal_fwd(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK)[0]


causal_attention.defvjp(_causal_fwd, _causal_bwd)
