"""T5's encoder stack (Hugging Face transformers' `T5EncoderModel`), in Flax.

Stable Audio conditions on t5-base's encoder: token ids -> `last_hidden_state` [B, S, 768], which
its `T5Conditioner` multiplies by the attention mask (and projects when the DiT's width differs).
The computation is the original's: RMS layer norms without bias or mean (float32 statistics),
attention without the 1/sqrt(d) scaling (T5 folds it into its weights), a learned relative
position bias computed by the first block and shared by all, masked keys at the dtype's minimum,
a ReLU (t5-base) or gated-GELU (T5 v1.1, Flan-T5) feed-forward.

Module paths are the original's (`encoder.block.3.layer.0.SelfAttention.q`,
`encoder.block.3.layer.1.DenseReluDense.wi`, `shared`), so LoRA rules and checkpoint keys use one
set of names; `lora_jax.interop.t5_convert` maps the few spellings `tree_paths` cannot.
"""

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class T5Config:
  """The fields of a Hugging Face T5 config.json the encoder uses; defaults are t5-base's."""

  vocab_size: int = 32128
  d_model: int = 768
  d_kv: int = 64
  d_ff: int = 3072
  num_layers: int = 12
  num_heads: int = 12
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "relu"

  def __post_init__(self):
    act = self.feed_forward_proj.removeprefix("gated-")
    if act not in _ACTIVATIONS:
      raise ValueError(f"feed_forward_proj {self.feed_forward_proj!r} is not implemented; "
                       f"'relu', 'gelu', 'gated-gelu' or 'gated-silu'")

  @property
  def gated(self) -> bool:
    return self.feed_forward_proj.startswith("gated-")


# transformers' names: a gated GELU is its tanh approximation ("gelu_new"), a plain one exact.
_ACTIVATIONS = {"relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=False),
                "silu": jax.nn.silu}


def _activation(config: T5Config):
  if config.feed_forward_proj == "gated-gelu":
    return lambda x: jax.nn.gelu(x, approximate=True)
  return _ACTIVATIONS[config.feed_forward_proj.removeprefix("gated-")]


def config_from_hf(hf_config: Mapping[str, Any]) -> T5Config:
  """A `T5Config` from a Hugging Face config.json object (fields it lacks take t5-base's)."""
  fields = {f.name for f in dataclasses.fields(T5Config)}
  return T5Config(**{k: v for k, v in hf_config.items() if k in fields})


class RMSNorm(nn.Module):
  """T5's layer norm: x / rms(x) * weight, statistics in float32."""

  eps: float

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    variance = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
    return scale * (x * jax.lax.rsqrt(variance + self.eps)).astype(x.dtype)


def relative_position_bucket(relative_position, num_buckets: int, max_distance: int):
  """T5's bidirectional bucketing of key - query offsets: exact below num_buckets / 4, then
  logarithmic up to max_distance, the sign in the top half of the buckets."""
  num_buckets //= 2
  buckets = (relative_position > 0).astype(jnp.int32) * num_buckets
  distance = jnp.abs(relative_position)
  max_exact = num_buckets // 2
  # log(0) at distance 0 is masked out by the `where`; keep it finite to keep gradients clean.
  safe = jnp.maximum(distance, 1).astype(jnp.float32)
  large = max_exact + (jnp.log(safe / max_exact) / math.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(distance < max_exact, distance, large)


class SelfAttention(nn.Module):
  config: T5Config
  has_relative_attention_bias: bool

  @nn.compact
  def __call__(self, h_BxSxD, mask_bias_Bx1x1xS, position_bias_1xHxSxS=None):
    c = self.config
    b, s, _ = h_BxSxD.shape
    dense = lambda name, width: nn.Dense(width, use_bias=False, name=name)
    heads = lambda x: x.reshape(b, s, c.num_heads, c.d_kv)
    q, k, v = (heads(dense(n, c.num_heads * c.d_kv)(h_BxSxD)) for n in "qkv")
    if position_bias_1xHxSxS is None:
      if not self.has_relative_attention_bias:
        raise ValueError("the first block computes the position bias")
      positions = jnp.arange(s)
      buckets = relative_position_bucket(positions[None, :] - positions[:, None],
                                         c.relative_attention_num_buckets,
                                         c.relative_attention_max_distance)
      table = nn.Embed(c.relative_attention_num_buckets, c.num_heads,
                       name="relative_attention_bias")
      position_bias_1xHxSxS = jnp.transpose(table(buckets), (2, 0, 1))[None]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) + position_bias_1xHxSxS + mask_bias_Bx1x1xS
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, s, c.num_heads * c.d_kv)
    return dense("o", c.d_model)(out), position_bias_1xHxSxS


class LayerSelfAttention(nn.Module):
  config: T5Config
  has_relative_attention_bias: bool

  @nn.compact
  def __call__(self, h, mask_bias, position_bias):
    normed = RMSNorm(self.config.layer_norm_epsilon, name="layer_norm")(h)
    out, position_bias = SelfAttention(self.config, self.has_relative_attention_bias,
                                       name="SelfAttention")(normed, mask_bias, position_bias)
    return h + out, position_bias


class DenseReluDense(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, h):
    c = self.config
    act = _activation(c)
    if c.gated:
      inner = act(nn.Dense(c.d_ff, use_bias=False, name="wi_0")(h)) * nn.Dense(
          c.d_ff, use_bias=False, name="wi_1")(h)
    else:
      inner = act(nn.Dense(c.d_ff, use_bias=False, name="wi")(h))
    return nn.Dense(c.d_model, use_bias=False, name="wo")(inner)


class LayerFF(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, h):
    normed = RMSNorm(self.config.layer_norm_epsilon, name="layer_norm")(h)
    return h + DenseReluDense(self.config, name="DenseReluDense")(normed)


class Block(nn.Module):
  config: T5Config
  has_relative_attention_bias: bool

  @nn.compact
  def __call__(self, h, mask_bias, position_bias):
    h, position_bias = LayerSelfAttention(self.config, self.has_relative_attention_bias,
                                          name="layer_0")(h, mask_bias, position_bias)
    return LayerFF(self.config, name="layer_1")(h), position_bias


class Stack(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, h_BxSxD, attention_mask_BxS):
    mask_bias = jnp.where(attention_mask_BxS[:, None, None, :] > 0, 0.0,
                          jnp.finfo(h_BxSxD.dtype).min).astype(h_BxSxD.dtype)
    position_bias = None
    for i in range(self.config.num_layers):
      h_BxSxD, position_bias = Block(self.config, i == 0, name=f"block_{i}")(
          h_BxSxD, mask_bias, position_bias)
    return RMSNorm(self.config.layer_norm_epsilon, name="final_layer_norm")(h_BxSxD)


class T5Encoder(nn.Module):
  """Token ids [B, S] and their attention mask (1 real, 0 padding) to hidden states [B, S, D]."""

  config: T5Config

  @nn.compact
  def __call__(self, input_ids_BxS, attention_mask_BxS=None):
    if attention_mask_BxS is None:
      attention_mask_BxS = jnp.ones(input_ids_BxS.shape, jnp.int32)
    h = nn.Embed(self.config.vocab_size, self.config.d_model, name="shared")(input_ids_BxS)
    return Stack(self.config, name="encoder")(h, attention_mask_BxS)


def abstract_params(config: T5Config):
  """Shapes and dtypes of the parameters, nothing computed."""
  ids = jnp.zeros((1, 4), jnp.int32)
  return jax.eval_shape(lambda: T5Encoder(config).init(jax.random.key(0), ids)["params"])
