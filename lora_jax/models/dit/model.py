"""Stable Audio's diffusion transformer (stable-audio-tools' `DiffusionTransformer`), in Flax.

The configuration Stable Audio Open uses: the `continuous_transformer` backbone, the timestep and
global conditioning summed into one token prepended to the sequence (`global_cond_type="prepend"`),
cross-attention on conditioning tokens, rotary position embeddings on part of each head. Other
options of the original (adaLN, input concatenation, patch sizes the checkpoints do not use, qk
norms, memory tokens) are refused by `config_from_original`, not approximated.

Module paths are the PyTorch model's (`transformer.layers.3.self_attn.to_qkv`,
`to_timestep_embed.0`, `transformer.layers.3.ff.ff.0.proj`): Flax's `layers_3` is spelled
`layers.3` by `lora_jax.tree_paths`, so LoRA rules, LoRAW component whitelists and checkpoint keys
use one set of names. Every linear layer is a plain `nn.Dense` (LoRA is injected from outside); the
two 1x1 convolutions are `nn.Dense` too (a 1x1 Conv1d is a linear map over channels), which
`lora_jax.interop.dit_convert` reshapes on the way in and out. Masks: version 0.0.19 of the original
ignores every attention mask in this backbone (it drops the cross-attention mask on purpose), so
this twin takes none.
"""

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.models.attention import attention

TIMESTEP_FEATURES = 256  # fixed in the original
LAYER_NORM_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """Sizes of the diffusion transformer; field names are the original's constructor arguments."""

  io_channels: int = 64
  patch_size: int = 1
  embed_dim: int = 1536
  cond_token_dim: int = 768  # 0: no cross-attention
  project_cond_tokens: bool = False
  global_cond_dim: int = 1536  # 0: no global conditioning (the timestep alone is prepended)
  project_global_cond: bool = True
  prepend_cond_dim: int = 0
  depth: int = 24
  num_heads: int = 24
  ff_mult: int = 4
  dtype: str = "float32"  # compute dtype; rotary embeddings and norms run in float32

  def __post_init__(self):
    if self.embed_dim % self.num_heads:
      raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads "
                       f"{self.num_heads}")
    if self.rotary_dim > self.head_dim:
      raise ValueError(f"head size {self.head_dim} (embed_dim {self.embed_dim} / num_heads "
                       f"{self.num_heads}) is below the rotary size {self.rotary_dim}; the "
                       "original fails on it too")
    if self.cond_token_dim:
      kv_dim = self.cond_embed_dim
      if kv_dim % self.head_dim or self.num_heads % (kv_dim // self.head_dim):
        raise ValueError(f"cross-attention context width {kv_dim} does not split into key/value "
                         f"heads of size {self.head_dim} that divide {self.num_heads} heads")

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def rotary_dim(self) -> int:
    # The original's `RotaryEmbedding(max(dim_heads // 2, 32))`: half of each head, at least 32.
    return max(self.head_dim // 2, 32)

  @property
  def cond_embed_dim(self) -> int:
    return self.embed_dim if self.project_cond_tokens else self.cond_token_dim

  @property
  def global_embed_dim(self) -> int:
    return self.embed_dim if self.project_global_cond else self.global_cond_dim


# The original constructor's defaults, which a JSON config that leaves a key out gets (DiTConfig's
# own defaults are Stable Audio Open's sizes).
_ORIGINAL_DEFAULTS = {"io_channels": 32, "patch_size": 1, "embed_dim": 768, "cond_token_dim": 0,
                      "project_cond_tokens": True, "global_cond_dim": 0,
                      "project_global_cond": True, "prepend_cond_dim": 0, "depth": 12,
                      "num_heads": 8}

# Options of the original this twin implements only at these values.
_FIXED = {"transformer_type": "continuous_transformer", "global_cond_type": "prepend",
          "timestep_cond_type": "global", "input_concat_dim": 0, "diffusion_objective": "v"}


def config_from_original(diffusion_config: Mapping[str, Any], dtype: str = "float32"
                         ) -> DiTConfig:
  """A `DiTConfig` from the original's `model.diffusion.config` JSON object, refusing options
  this twin does not implement."""
  fields = {f.name for f in dataclasses.fields(DiTConfig)} - {"ff_mult", "dtype"}
  unknown = sorted(set(diffusion_config) - fields - set(_FIXED))
  if unknown:
    raise ValueError(f"diffusion config options {unknown} are not implemented by "
                     "lora_jax.models.dit.model (it implements the continuous_transformer with "
                     "prepended global conditioning and its defaults)")
  for key, value in _FIXED.items():
    if key in diffusion_config and diffusion_config[key] != value:
      raise ValueError(f"diffusion config {key}={diffusion_config[key]!r} is not implemented; "
                       f"lora_jax.models.dit.model supports {key}={value!r} only")
  kwargs = {**_ORIGINAL_DEFAULTS, **{k: v for k, v in diffusion_config.items() if k in fields}}
  return DiTConfig(**kwargs, dtype=dtype)


class LayerNorm(nn.Module):
  """The original's LayerNorm: bias-free (its `beta` is a zero buffer), computed in float32."""

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    h = x.astype(jnp.float32)
    mean = h.mean(-1, keepdims=True)
    var = jnp.square(h - mean).mean(-1, keepdims=True)
    return ((h - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS) * scale).astype(x.dtype)


def rotary_frequencies(seq_len: int, rotary_dim: int):
  """[T, rotary_dim] angles, float32: position * inverse frequency, the halves repeated."""
  inv_freq = 1.0 / (10000 ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
  freqs = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
  return jnp.concatenate([freqs, freqs], axis=-1)


def apply_rotary(x_BxTxHxK, freqs_TxR):
  """Rotates the first R features of each head by the angles (the rest pass), as GPT-J does."""
  r = freqs_TxR.shape[-1]
  x = x_BxTxHxK.astype(jnp.float32)
  rot, rest = x[..., :r], x[..., r:]
  first, second = rot[..., :r // 2], rot[..., r // 2:]
  rotated_half = jnp.concatenate([-second, first], axis=-1)
  cos, sin = jnp.cos(freqs_TxR)[:, None, :], jnp.sin(freqs_TxR)[:, None, :]
  rot = rot * cos + rotated_half * sin
  return jnp.concatenate([rot, rest], axis=-1).astype(x_BxTxHxK.dtype)


class Attention(nn.Module):
  """Self-attention (`to_qkv`) or cross-attention (`to_q`, `to_kv`), then `to_out`."""

  config: DiTConfig
  cross: bool

  @nn.compact
  def __call__(self, x_BxTxD, context_BxSxC=None, freqs_TxR=None):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    b, t, d = x_BxTxD.shape
    dh = cfg.head_dim
    dense = lambda n, name, kernel_init=nn.linear.default_kernel_init: nn.Dense(
        n, use_bias=False, dtype=dtype, kernel_init=kernel_init, name=name)
    if self.cross:
      s, c = context_BxSxC.shape[1:]
      q = dense(d, "to_q")(x_BxTxD).reshape(b, t, d // dh, dh)
      kv = dense(2 * c, "to_kv")(context_BxSxC)
      k, v = (a.reshape(b, s, c // dh, dh) for a in jnp.split(kv, 2, axis=-1))
      # Fewer key/value heads than query heads: each serves a run of consecutive query heads (the
      # original's repeat_interleave).
      k, v = (jnp.repeat(a, (d // dh) // (c // dh), axis=2) for a in (k, v))
    else:
      q, k, v = (a.reshape(b, t, d // dh, dh)
                 for a in jnp.split(dense(3 * d, "to_qkv")(x_BxTxD), 3, axis=-1))
    if freqs_TxR is not None:
      q, k = apply_rotary(q, freqs_TxR), apply_rotary(k, freqs_TxR)
    out_BxTxD = attention(q, k, v).reshape(b, t, d)
    return dense(d, "to_out", nn.initializers.zeros)(out_BxTxD)


class GLU(nn.Module):
  """`proj` to twice the width, then value * SiLU(gate) (SwiGLU)."""

  config: DiTConfig

  @nn.compact
  def __call__(self, x):
    inner = self.config.embed_dim * self.config.ff_mult
    h = nn.Dense(2 * inner, dtype=jnp.dtype(self.config.dtype), name="proj")(x)
    value, gate = jnp.split(h, 2, axis=-1)
    return value * jax.nn.silu(gate)


class FeedForward(nn.Module):
  """`ff.0` (the GLU) and `ff.2` (zero-initialised output), the original's Sequential indices."""

  config: DiTConfig

  @nn.compact
  def __call__(self, x):
    h = GLU(self.config, name="ff_0")(x)
    return nn.Dense(self.config.embed_dim, dtype=jnp.dtype(self.config.dtype),
                    kernel_init=nn.initializers.zeros, name="ff_2")(h)


class TransformerBlock(nn.Module):
  """Pre-norm block: self-attention with rotary, cross-attention, feed-forward."""

  config: DiTConfig

  @nn.compact
  def __call__(self, x_BxTxD, context_BxSxC, freqs_TxR):
    cfg = self.config
    x_BxTxD = x_BxTxD + Attention(cfg, cross=False, name="self_attn")(
        LayerNorm(name="pre_norm")(x_BxTxD), freqs_TxR=freqs_TxR)
    if context_BxSxC is not None:  # as the original: no tokens, no cross-attention
      x_BxTxD = x_BxTxD + Attention(cfg, cross=True, name="cross_attn")(
          LayerNorm(name="cross_attend_norm")(x_BxTxD), context_BxSxC)
    return x_BxTxD + FeedForward(cfg, name="ff")(LayerNorm(name="ff_norm")(x_BxTxD))


class ContinuousTransformer(nn.Module):
  """`project_in`, the blocks over [prepended tokens, sequence], `project_out`."""

  config: DiTConfig

  @nn.compact
  def __call__(self, x_BxTxI, prepend_BxPxD, context_BxSxC):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    out_dim = cfg.io_channels * cfg.patch_size
    x_BxTxD = nn.Dense(cfg.embed_dim, use_bias=False, dtype=dtype, name="project_in")(x_BxTxI)
    x_BxTxD = jnp.concatenate([prepend_BxPxD.astype(x_BxTxD.dtype), x_BxTxD], axis=1)
    freqs_TxR = rotary_frequencies(x_BxTxD.shape[1], cfg.rotary_dim)
    for i in range(cfg.depth):
      x_BxTxD = TransformerBlock(cfg, name=f"layers_{i}")(x_BxTxD, context_BxSxC, freqs_TxR)
    return nn.Dense(out_dim, use_bias=False, dtype=dtype, name="project_out")(x_BxTxD)


class FourierFeatures(nn.Module):
  """cos and sin of 2 pi t w: frequencies w drawn N(0, 1) at init and trained, as the original."""

  @nn.compact
  def __call__(self, t_Bx1):
    w = self.param("weight", nn.initializers.normal(1.0), (TIMESTEP_FEATURES // 2, 1))
    f = 2 * math.pi * t_Bx1.astype(jnp.float32) @ w.T
    return jnp.concatenate([jnp.cos(f), jnp.sin(f)], axis=-1)


def _mlp(x, width_out, name, use_bias, dtype):
  """The original's nn.Sequential(Linear, SiLU, Linear): Dense `name.0` and `name.2`."""
  h = nn.Dense(width_out, use_bias=use_bias, dtype=dtype, name=f"{name}_0")(x)
  return nn.Dense(width_out, use_bias=use_bias, dtype=dtype, name=f"{name}_2")(jax.nn.silu(h))


class DiffusionTransformer(nn.Module):
  """x [B, io_channels, T] (channels first, as the original) and t [B] in [0, 1] to the model
  output [B, io_channels, T] (v for the v-objective).

  cross_attn_cond [B, S, cond_token_dim], global_embed [B, global_cond_dim] and prepend_cond
  [B, P, prepend_cond_dim] are the original's conditioning inputs.
  """

  config: DiTConfig

  @nn.compact
  def __call__(self, x_BxCxT, t_B, *, cross_attn_cond=None, global_embed=None,
               prepend_cond=None):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    b, c, t = x_BxCxT.shape
    if c != cfg.io_channels:
      raise ValueError(f"input has {c} channels, the model {cfg.io_channels}")
    if t % cfg.patch_size:
      raise ValueError(f"input length {t} is not divisible by patch_size {cfg.patch_size}")
    for name, value, width in (("cross_attn_cond", cross_attn_cond, cfg.cond_token_dim),
                               ("global_embed", global_embed, cfg.global_cond_dim),
                               ("prepend_cond", prepend_cond, cfg.prepend_cond_dim)):
      if value is not None and not width:
        raise ValueError(f"{name} given to a model built without it ({name} width 0)")

    # Inputs left out skip their layers (whose parameters `init` creates), as in the original.
    context = None
    if cross_attn_cond is not None:
      context = _mlp(cross_attn_cond.astype(dtype), cfg.cond_embed_dim, "to_cond_embed", False,
                     dtype)
    global_vec = None
    if global_embed is not None:
      global_vec = _mlp(global_embed.astype(dtype), cfg.global_embed_dim, "to_global_embed",
                        False, dtype)
    prepend = []
    if prepend_cond is not None:
      prepend.append(_mlp(prepend_cond.astype(dtype), cfg.embed_dim, "to_prepend_embed", False,
                          dtype))

    features = FourierFeatures(name="timestep_features")(t_B[:, None])
    timestep = _mlp(features.astype(dtype), cfg.embed_dim, "to_timestep_embed", True, dtype)
    global_vec = timestep if global_vec is None else global_vec + timestep
    prepend.append(global_vec[:, None, :])
    prepend_BxPxD = jnp.concatenate(prepend, axis=1)

    x_BxCxT = x_BxCxT.astype(dtype)
    conv = lambda name, n: nn.Dense(n, use_bias=False, dtype=dtype,
                                    kernel_init=nn.initializers.zeros, name=name)
    x_BxTxC = jnp.swapaxes(x_BxCxT, 1, 2)
    x_BxTxC = conv("preprocess_conv", c)(x_BxTxC) + x_BxTxC
    # "b (t p) c -> b t (c p)": channel-major within a patch.
    p = cfg.patch_size
    x_BxNxI = x_BxTxC.reshape(b, t // p, p, c).swapaxes(2, 3).reshape(b, t // p, c * p)
    out = ContinuousTransformer(cfg, name="transformer")(x_BxNxI, prepend_BxPxD, context)
    out = out[:, prepend_BxPxD.shape[1]:]
    out_BxTxC = out.reshape(b, t // p, c, p).swapaxes(2, 3).reshape(b, t, c)
    out_BxTxC = conv("postprocess_conv", c)(out_BxTxC) + out_BxTxC
    return jnp.swapaxes(out_BxTxC, 1, 2)


def abstract_params(config: DiTConfig, seq_len: int = 16, cond_len: int = 4):
  """Shapes and dtypes of the parameters (jax.ShapeDtypeStruct leaves), nothing computed."""
  return jax.eval_shape(lambda: init(config, jax.random.key(0), seq_len, cond_len))


def init(config: DiTConfig, key, seq_len: int = 16, cond_len: int = 4):
  """Fresh parameters (zero-initialised where the original zero-initialises)."""
  x = jnp.zeros((1, config.io_channels, seq_len * config.patch_size), jnp.float32)
  kwargs = {}
  if config.cond_token_dim:
    kwargs["cross_attn_cond"] = jnp.zeros((1, cond_len, config.cond_token_dim), jnp.float32)
  if config.global_cond_dim:
    kwargs["global_embed"] = jnp.zeros((1, config.global_cond_dim), jnp.float32)
  if config.prepend_cond_dim:
    kwargs["prepend_cond"] = jnp.zeros((1, 1, config.prepend_cond_dim), jnp.float32)
  return jax.jit(DiffusionTransformer(config).init)(key, x, jnp.zeros((1,)), **kwargs)["params"]
