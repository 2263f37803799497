"""Decoder-only transformer over MIDI event tokens: the base of the hierarchical style adapters.

Pre-LN blocks; attention with separate `q_proj`/`k_proj`/`v_proj`/`out_proj` and a two-layer
feed-forward `ff.in`/`ff.out`, so the seeds' LoRA target names mean what they say. Every linear
layer is a plain `nn.Dense`: LoRA is injected from outside (`lora_jax.lora.forward`), so this file
knows nothing of adapters or training.

With `decode=True` the attention keeps a key/value cache in the `cache` collection and the model is
called one token at a time (see `lora_jax.models.decode`).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.models import rotary
from lora_jax.models.attention import attention
from lora_jax.models.activations import gelu


POSITIONS = ("learned", "rotary")
ROTARY_THETA = 10000.0


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Size of the symbolic music transformer."""

  vocab_size: int = 512
  d_model: int = 256
  n_heads: int = 4
  n_layers: int = 4
  d_ff: int = 1024
  max_len: int = 512
  dropout: float = 0.1
  dtype: str = "float32"  # compute dtype; parameters stay float32 unless cast by the caller
  # "learned": a table of max_len position vectors added to the token embeddings (`pos_emb`);
  # "rotary": queries and keys rotated by their positions (`models/rotary.py`, theta 10,000), no
  # table. A model learns a note's distance to the last one far sooner with rotary positions in
  # 1,024-token windows (docs/base_rhythm.md). Files from before this field are "learned".
  positions: str = "learned"

  def __post_init__(self):
    if self.d_model % self.n_heads:
      raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
    if self.positions not in POSITIONS:
      raise ValueError(f"positions {self.positions!r} is not one of {', '.join(POSITIONS)}")
    if self.positions == "rotary" and (self.d_model // self.n_heads) % 2:
      raise ValueError(f"rotary positions need an even head size, got "
                       f"{self.d_model // self.n_heads} (d_model {self.d_model} over "
                       f"{self.n_heads} heads)")


def _dtype(config: TransformerConfig):
  return jnp.dtype(config.dtype)


class Attention(nn.Module):
  """Causal multi-head self-attention with an optional key/value cache."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BxTxD, positions_BxT, *, deterministic: bool, decode: bool = False):
    cfg = self.config
    b, t, d = x_BxTxD.shape
    h, dh = cfg.n_heads, cfg.d_model // cfg.n_heads
    dense = lambda name: nn.Dense(d, dtype=_dtype(cfg), name=name)
    q_BxTxHxK = dense("q_proj")(x_BxTxD).reshape(b, t, h, dh)
    k_BxTxHxK = dense("k_proj")(x_BxTxD).reshape(b, t, h, dh)
    v_BxTxHxK = dense("v_proj")(x_BxTxD).reshape(b, t, h, dh)
    if cfg.positions == "rotary":
      # Keys enter the cache rotated, so a cached key is never rotated again.
      cos_BxTxK, sin_BxTxK = rotary.tables(positions_BxT, dh, ROTARY_THETA, q_BxTxHxK.dtype)
      q_BxTxHxK = rotary.apply(q_BxTxHxK, cos_BxTxK, sin_BxTxK)
      k_BxTxHxK = rotary.apply(k_BxTxHxK, cos_BxTxK, sin_BxTxK)

    if decode:
      # One new position per call; keys and values of earlier positions come from the cache.
      is_initialized = self.has_variable("cache", "key")
      shape = (b, cfg.max_len, h, dh)
      cached_k = self.variable("cache", "key", jnp.zeros, shape, k_BxTxHxK.dtype)
      cached_v = self.variable("cache", "value", jnp.zeros, shape, v_BxTxHxK.dtype)
      index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
      if is_initialized:
        if t != 1:
          raise ValueError(f"cached decoding takes one token per call, got {t}")
        i = index.value
        cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_BxTxHxK, (0, i, 0, 0))
        cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_BxTxHxK, (0, i, 0, 0))
        index.value = i + 1
        k_BxTxHxK, v_BxTxHxK = cached_k.value, cached_v.value
        # Keys 0..i are real: a length per row, which fused kernels take without a mask tensor.
        out_BxTxHxK = attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK,
                                kv_lengths_B=jnp.full((b,), i + 1, jnp.int32))
      else:
        out_BxTxHxK = attention(
            q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, is_causal=True)
    else:
      out_BxTxHxK = attention(
          q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, is_causal=True)
    out_BxTxD = out_BxTxHxK.reshape(b, t, d)
    out_BxTxD = nn.Dropout(cfg.dropout)(out_BxTxD, deterministic=deterministic)
    return dense("out_proj")(out_BxTxD)


class FeedForward(nn.Module):
  """Two-layer GELU feed-forward: `in` widens to d_ff, `out` projects back."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BxTxD, *, deterministic: bool):
    cfg = self.config
    h_BxTxF = nn.Dense(cfg.d_ff, dtype=_dtype(cfg), name="in")(x_BxTxD)
    h_BxTxF = gelu(h_BxTxF)
    h_BxTxF = nn.Dropout(cfg.dropout)(h_BxTxF, deterministic=deterministic)
    return nn.Dense(cfg.d_model, dtype=_dtype(cfg), name="out")(h_BxTxF)


class Block(nn.Module):
  """Pre-LN transformer block: x + attn(ln1(x)), then x + ff(ln2(x))."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x_BxTxD, deterministic: bool, decode: bool, positions_BxT):
    cfg = self.config
    drop = nn.Dropout(cfg.dropout)
    h = nn.LayerNorm(epsilon=1e-5, dtype=_dtype(cfg), name="ln1")(x_BxTxD)
    h = Attention(cfg, name="attn")(h, positions_BxT, deterministic=deterministic, decode=decode)
    x_BxTxD = x_BxTxD + drop(h, deterministic=deterministic)
    h = nn.LayerNorm(epsilon=1e-5, dtype=_dtype(cfg), name="ln2")(x_BxTxD)
    h = FeedForward(cfg, name="ff")(h, deterministic=deterministic)
    return x_BxTxD + drop(h, deterministic=deterministic)


class MusicTransformer(nn.Module):
  """Token ids [B, T] to next-token logits [B, T, vocab_size] (float32)."""

  config: TransformerConfig
  # Recompute each block's activations in the backward pass instead of keeping them
  # (jax.checkpoint per block): the same numbers, fewer activations alive. How the model runs,
  # not its size, so not in TransformerConfig (which files record).
  remat: bool = False

  @nn.compact
  def __call__(self, tokens_BxT, *, deterministic: bool = True, decode: bool = False,
               positions_BxT=None):
    cfg = self.config
    b, t = tokens_BxT.shape
    if positions_BxT is None:
      if decode and self.has_variable("cache", "position"):
        pos = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
        positions_BxT = jnp.broadcast_to(pos.value, (b, t))
        pos.value = pos.value + t
      else:
        if decode:
          self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
        positions_BxT = jnp.broadcast_to(jnp.arange(t), (b, t))
    if t > cfg.max_len:
      raise ValueError(f"sequence length {t} exceeds max_len {cfg.max_len}")
    # Summed in float32 whatever the weights are stored in: two bfloat16 embeddings added in
    # bfloat16 lose bits that float32 compute would otherwise keep (0.054 in the shipped base's
    # logits).
    embed = lambda n, name: nn.Embed(n, cfg.d_model, dtype=jnp.float32, name=name)
    x_BxTxD = embed(cfg.vocab_size, "tok_emb")(tokens_BxT)
    if cfg.positions == "learned":
      x_BxTxD = x_BxTxD + embed(cfg.max_len, "pos_emb")(positions_BxT)
    x_BxTxD = nn.Dropout(cfg.dropout)(x_BxTxD, deterministic=deterministic).astype(_dtype(cfg))
    # Positional flags: remat specialises on them (argument 0 is the module itself).
    block = nn.remat(Block, static_argnums=(2, 3)) if self.remat else Block
    for i in range(cfg.n_layers):
      x_BxTxD = block(cfg, name=f"blocks_{i}")(x_BxTxD, deterministic, decode, positions_BxT)
    x_BxTxD = nn.LayerNorm(epsilon=1e-5, dtype=_dtype(cfg), name="ln_f")(x_BxTxD)
    logits_BxTxV = nn.Dense(cfg.vocab_size, dtype=_dtype(cfg), name="head")(x_BxTxD)
    return logits_BxTxV.astype(jnp.float32)


def abstract_params(config: TransformerConfig):
  """Shapes and dtypes of the model's parameters (jax.ShapeDtypeStruct leaves), nothing computed."""
  tokens_BxT = jnp.zeros((1, config.max_len), jnp.int32)
  return jax.eval_shape(MusicTransformer(config).init, jax.random.key(0), tokens_BxT)["params"]
