"""PhraseTransformer: per-note features of a phrase in, each note's velocity and duration out.

The DUV humanisation model. A phrase is L notes (a window of one track, in (onset, pitch) order),
each a vector of C scaled features (`lora_jax.data.duv.features`), with a pad mask and each
note's written duration in beats (unscaled: the duration head scales it). An input
projection and learned positions feed bidirectional pre-LN encoder blocks: every real note attends
to every real note of its phrase, before and after it, and never to padding, so the outputs at
real notes do not depend on what the padding holds (a tested invariant).

Projections carry the DUV seed's LoRA target names (`attn.q_proj`, `attn.k_proj`, `attn.v_proj`,
`attn.out_proj`, `ff.in`, `ff.out`), all plain `nn.Dense`, so LoRA injected from outside
(`lora_jax.lora.forward`) adapts exactly the modules a config names.

Outputs, float32 [B, L]:
  velocity   MIDI units in (0, 127): 127 * sigmoid(vel_head), bounded by construction.
  dur_beats  beats, > 0: written_dur * exp(dur_head), a residual over the written duration. The
             head starts at zero, so an untrained model keeps every written duration exactly:
             "play it as written" is the default the model has to improve on, not something it
             must learn from scratch (an absolute softplus head, tried first, ended at twice the
             error of keeping the written duration on held-out performances).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.models.attention import attention
from lora_jax.models.activations import gelu

VELOCITY_MAX = 127.0


@dataclasses.dataclass(frozen=True)
class PhraseTransformerConfig:
  """Size of the phrase transformer."""

  n_features: int = 17  # input columns: duv_manifest.feature_columns(duv_features.ALL_FEATURES)
  d_model: int = 128
  n_heads: int = 4
  n_layers: int = 4
  d_ff: int = 512
  max_len: int = 256  # notes per phrase (learned positions)
  dropout: float = 0.1
  dtype: str = "float32"  # compute dtype; parameters stay float32 unless cast by the caller

  def __post_init__(self):
    if self.d_model % self.n_heads:
      raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
    for name in ("n_features", "n_layers", "d_ff", "max_len"):
      if getattr(self, name) < 1:
        raise ValueError(f"PhraseTransformerConfig.{name} must be >= 1, got {getattr(self, name)}")


class Attention(nn.Module):
  """Bidirectional multi-head self-attention over the real notes (keys masked by the pad mask)."""

  config: PhraseTransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD, keymask_Bx1x1xL, *, deterministic: bool):
    cfg = self.config
    b, l, d = x_BxLxD.shape
    h, dh = cfg.n_heads, cfg.d_model // cfg.n_heads
    dense = lambda name: nn.Dense(d, dtype=jnp.dtype(cfg.dtype), name=name)
    q_BxLxHxK = dense("q_proj")(x_BxLxD).reshape(b, l, h, dh)
    k_BxLxHxK = dense("k_proj")(x_BxLxD).reshape(b, l, h, dh)
    v_BxLxHxK = dense("v_proj")(x_BxLxD).reshape(b, l, h, dh)
    out_BxLxHxK = attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask=keymask_Bx1x1xL)
    out_BxLxD = nn.Dropout(cfg.dropout)(out_BxLxHxK.reshape(b, l, d), deterministic=deterministic)
    return dense("out_proj")(out_BxLxD)


class FeedForward(nn.Module):
  """Two-layer GELU feed-forward: `in` widens to d_ff, `out` projects back."""

  config: PhraseTransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD, *, deterministic: bool):
    cfg = self.config
    h_BxLxF = nn.Dense(cfg.d_ff, dtype=jnp.dtype(cfg.dtype), name="in")(x_BxLxD)
    h_BxLxF = nn.Dropout(cfg.dropout)(gelu(h_BxLxF),
                                      deterministic=deterministic)
    return nn.Dense(cfg.d_model, dtype=jnp.dtype(cfg.dtype), name="out")(h_BxLxF)


class EncoderBlock(nn.Module):
  """Pre-LN encoder block: x + attn(ln1(x)), then x + ff(ln2(x))."""

  config: PhraseTransformerConfig

  @nn.compact
  def __call__(self, x_BxLxD, keymask_Bx1x1xL, *, deterministic: bool):
    cfg = self.config
    drop = nn.Dropout(cfg.dropout)
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=jnp.dtype(cfg.dtype), name=name)
    h = Attention(cfg, name="attn")(norm("ln1")(x_BxLxD), keymask_Bx1x1xL,
                                    deterministic=deterministic)
    x_BxLxD = x_BxLxD + drop(h, deterministic=deterministic)
    h = FeedForward(cfg, name="ff")(norm("ln2")(x_BxLxD), deterministic=deterministic)
    return x_BxLxD + drop(h, deterministic=deterministic)


class PhraseTransformer(nn.Module):
  """Features [B, L, C], pad mask [B, L] and written durations [B, L] (beats) to
  {'velocity', 'dur_beats'}, float32 [B, L] each."""

  config: PhraseTransformerConfig

  @nn.compact
  def __call__(self, inputs_BxLxC, mask_BxL, written_dur_BxL, *, deterministic: bool = True):
    cfg = self.config
    b, l, c = inputs_BxLxC.shape
    if c != cfg.n_features:
      raise ValueError(f"inputs have {c} feature columns, the model takes {cfg.n_features}")
    if l > cfg.max_len:
      raise ValueError(f"phrase of {l} notes exceeds max_len {cfg.max_len}")
    if tuple(mask_BxL.shape) != (b, l):
      raise ValueError(f"mask has shape {tuple(mask_BxL.shape)}, inputs need ({b}, {l})")
    if tuple(written_dur_BxL.shape) != (b, l):
      raise ValueError(f"written_dur has shape {tuple(written_dur_BxL.shape)}, inputs need "
                       f"({b}, {l})")
    dtype = jnp.dtype(cfg.dtype)
    x_BxLxD = nn.Dense(cfg.d_model, dtype=dtype, name="in_proj")(inputs_BxLxC)
    # Summed in float32 (see transformer.py), then cast to the compute dtype.
    pos_LxD = nn.Embed(cfg.max_len, cfg.d_model, dtype=jnp.float32, name="pos_emb")(jnp.arange(l))
    x_BxLxD = x_BxLxD.astype(jnp.float32) + pos_LxD[None]
    x_BxLxD = nn.Dropout(cfg.dropout)(x_BxLxD, deterministic=deterministic).astype(dtype)
    keymask_Bx1x1xL = (mask_BxL > 0)[:, None, None, :]
    for i in range(cfg.n_layers):
      x_BxLxD = EncoderBlock(cfg, name=f"blocks_{i}")(x_BxLxD, keymask_Bx1x1xL,
                                                      deterministic=deterministic)
    x_BxLxD = nn.LayerNorm(epsilon=1e-5, dtype=dtype, name="ln_f")(x_BxLxD)
    vel_BxL = nn.Dense(1, dtype=dtype, name="vel_head")(x_BxLxD)[..., 0].astype(jnp.float32)
    log_ratio_BxL = nn.Dense(1, dtype=dtype, kernel_init=nn.initializers.zeros,
                             name="dur_head")(x_BxLxD)[..., 0].astype(jnp.float32)
    return {"velocity": VELOCITY_MAX * jax.nn.sigmoid(vel_BxL),
            "dur_beats": written_dur_BxL.astype(jnp.float32) * jnp.exp(log_ratio_BxL)}
