"""SongGeneration's (LeVo's) language model in Flax, with the original's parameter paths.

Two Llama stacks: `transformer` reads stream 0 (the mixed track) and predicts it through its
`lm_head`; `transformer2` reads `mlp([sum of layer2_emb over streams 1.., transformer's
final-norm hidden state])` and predicts streams 1.. (vocal, accompaniment) through `linears.K`.
Conditions are embedded by `condition_provider.conditioners.<name>` and prepended in the order of
`config.prepend` (first name outermost), with no mask, as the original does. The model reads the
delay-patterned sequence [B, K, S]; `lora_jax.models.song.delay_pattern` builds and reverts it.

Parameter paths (`lora_jax.tree_paths`) equal the original's state-dict keys without `audiolm.`
(`transformer.model.layers.0.self_attn.q_proj`, `emb.0`, `mlp.0`, `linears.1`, ...), except
`prompt_audio`'s bare `EOT_emb`/`layer2_EOT_emb` parameters, held here as one-row embeddings
(`lora_jax.interop.song_lm_weights` renames them). Parameters the original stores but never uses
(`*.model.embed_tokens`, `transformer2.lm_head`, `layer2_emb.0`) exist here too, so a checkpoint
goes in and out whole. Every linear layer is a plain `nn.Dense`; LoRA is injected from outside.
The PyTorch twin is `third_party/song_lm_torch.py`.
"""

import dataclasses
from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.models.activations import gelu
from lora_jax.models import rotary
from lora_jax.models.attention import attention

CONDITIONERS = ("description", "type_info", "prompt_audio")


@dataclasses.dataclass(frozen=True)
class SongLMConfig:
  """Sizes of the song LM (the original's `lm` section); defaults are a tiny test size."""

  code_depth: int = 3
  code_size: int = 16384  # codes 0..code_size-1; code_size = end of sequence; +1 = special
  dim: int = 64
  intermediate_size: int = 128
  num_heads: int = 4
  num_layers: int = 2
  num_layers_sub: int = 1
  rope_theta: float = 100000.0
  rope_theta_sub: float = 500000.0
  rms_norm_eps: float = 1e-5
  text_vocab_size: int = 64
  structure_vocab_size: int = 200
  prepend: tuple[str, ...] = ("description", "prompt_audio", "type_info")
  dtype: str = "float32"  # compute dtype; parameters stay as stored

  def __post_init__(self):
    if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
      raise ValueError(f"dim {self.dim} over num_heads {self.num_heads} must give an even head "
                       "size (rotary embeddings rotate pairs)")
    if self.code_depth < 2:
      raise ValueError(f"code_depth {self.code_depth} < 2: the song LM has a second stack")
    unknown = [n for n in self.prepend if n not in CONDITIONERS]
    if unknown:
      raise ValueError(f"unknown conditioner {unknown[0]!r} in prepend; known: "
                       f"{', '.join(CONDITIONERS)}")

  @property
  def special_token(self) -> int:
    return self.code_size + 1

  @property
  def eos_token(self) -> int:
    return self.code_size


# Norms, softmax and rotary tables in float32 (the original's upcast); float64 stays float64.
_work = rotary.work_dtype


class RMSNorm(nn.Module):
  eps: float

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    h = x.astype(_work(x.dtype))
    h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
    return scale.astype(x.dtype) * h.astype(x.dtype)


class LlamaAttention(nn.Module):
  """Causal self-attention with rotary positions; with `cache_len` > 0 keys and values of earlier
  calls are kept in the `cache` collection and each call continues the sequence."""

  config: SongLMConfig
  theta: float
  cache_len: int = 0

  @nn.compact
  def __call__(self, x_BxSxD):
    cfg = self.config
    b, s, d = x_BxSxD.shape
    h, dh = cfg.num_heads, d // cfg.num_heads
    dense = lambda name: nn.Dense(d, use_bias=False, dtype=x_BxSxD.dtype, name=name)
    q = dense("q_proj")(x_BxSxD).reshape(b, s, h, dh)
    k = dense("k_proj")(x_BxSxD).reshape(b, s, h, dh)
    v = dense("v_proj")(x_BxSxD).reshape(b, s, h, dh)
    start = jnp.zeros((), jnp.int32)
    if self.cache_len:
      is_initialized = self.has_variable("cache", "key")
      shape = (b, self.cache_len, h, dh)
      cached_k = self.variable("cache", "key", jnp.zeros, shape, k.dtype)
      cached_v = self.variable("cache", "value", jnp.zeros, shape, v.dtype)
      index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
      start = index.value if is_initialized else start
    cos_SxK, sin_SxK = rotary.tables(start + jnp.arange(s), dh, self.theta, x_BxSxD.dtype)
    q = rotary.apply(q, cos_SxK[None], sin_SxK[None])
    k = rotary.apply(k, cos_SxK[None], sin_SxK[None])
    if self.cache_len and is_initialized:
      cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, start, 0, 0))
      cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, start, 0, 0))
      index.value = start + s
      # Query i (at position start + i) sees keys 0 .. start + i.
      keep = jnp.arange(self.cache_len)[None, :] <= start + jnp.arange(s)[:, None]
      out = attention(q, cached_k.value, cached_v.value, mask=keep[None, None])
    else:
      out = attention(q, k, v, is_causal=True)
    return dense("o_proj")(out.reshape(b, s, d))


class LlamaMLP(nn.Module):
  config: SongLMConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=x.dtype, name=name)
    gate = dense(cfg.intermediate_size, "gate_proj")(x)
    return dense(cfg.dim, "down_proj")(jax.nn.silu(gate) * dense(cfg.intermediate_size,
                                                                    "up_proj")(x))


class LlamaDecoderLayer(nn.Module):
  config: SongLMConfig
  theta: float
  cache_len: int = 0

  @nn.compact
  def __call__(self, x):
    eps = self.config.rms_norm_eps
    x = x + LlamaAttention(self.config, self.theta, self.cache_len, name="self_attn")(
        RMSNorm(eps, name="input_layernorm")(x))
    return x + LlamaMLP(self.config, name="mlp")(RMSNorm(eps, name="post_attention_layernorm")(x))


class LlamaModel(nn.Module):
  config: SongLMConfig
  num_layers: int
  theta: float
  cache_len: int = 0

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    if self.is_initializing():  # stored by the original, never read: created for a whole checkpoint
      nn.Embed(cfg.code_size + 1, cfg.dim, name="embed_tokens")(jnp.zeros((1,), jnp.int32))
    for i in range(self.num_layers):
      x = LlamaDecoderLayer(cfg, self.theta, self.cache_len, name=f"layers_{i}")(x)
    return RMSNorm(cfg.rms_norm_eps, name="norm")(x)


class CausalLM(nn.Module):
  """Returns (lm_head logits or None, final-norm hidden states)."""

  config: SongLMConfig
  num_layers: int
  theta: float
  use_head: bool
  cache_len: int = 0

  @nn.compact
  def __call__(self, x):
    hidden = LlamaModel(self.config, self.num_layers, self.theta, self.cache_len,
                        name="model")(x)
    head = nn.Dense(self.config.code_size + 1, use_bias=False, dtype=x.dtype, name="lm_head")
    if self.use_head:
      return head(hidden), hidden
    if self.is_initializing():  # transformer2's head: stored, unused
      head(hidden[:, :1])
    return None, hidden


class QwTokenizerConditioner(nn.Module):
  """Lyrics: token embedding + section (structure) embedding, the same on both paths."""

  config: SongLMConfig

  @nn.compact
  def __call__(self, tokens_and_sections):
    tokens_BxL, sections_BxL = tokens_and_sections
    cfg = self.config
    # Summed in float32 whatever the weights are stored in (bfloat16 + bfloat16 rounds the sum).
    e = (nn.Embed(cfg.text_vocab_size, cfg.dim, dtype=jnp.float32, name="output_proj")(tokens_BxL)
         + nn.Embed(cfg.structure_vocab_size, cfg.dim, dtype=jnp.float32,
                    name="structure_emb")(sections_BxL))
    return e, e


class QwTextConditioner(nn.Module):
  config: SongLMConfig

  @nn.compact
  def __call__(self, tokens_BxL):
    e = nn.Embed(self.config.text_vocab_size, self.config.dim, name="output_proj")(tokens_BxL)
    return e, e


class QuantizedEmbeddingConditioner(nn.Module):
  """Reference-audio codes [B, K, L]: [EOT, emb.0(codes 0)] and [EOT2, sum emb.k(codes k)]."""

  config: SongLMConfig

  @nn.compact
  def __call__(self, codes_BxKxL):
    cfg = self.config
    b = codes_BxKxL.shape[0]
    # Summed in float32 whatever the weights are stored in, as the sequence's own embeddings.
    embs = [nn.Embed(cfg.code_size + 2, cfg.dim, dtype=jnp.float32, name=f"emb_{k}")
            for k in range(cfg.code_depth)]
    eot = lambda name: nn.Embed(1, cfg.dim, name=name)(jnp.zeros((b, 1), jnp.int32))
    e1 = jnp.concatenate([eot("EOT_emb"), embs[0](codes_BxKxL[:, 0])], axis=1)
    e2 = sum(embs[k](codes_BxKxL[:, k]) for k in range(1, codes_BxKxL.shape[1]))
    return e1, jnp.concatenate([eot("layer2_EOT_emb"), e2], axis=1)


_CONDITIONER_CLASSES = {"description": QwTokenizerConditioner, "type_info": QwTextConditioner,
                        "prompt_audio": QuantizedEmbeddingConditioner}


class Conditioners(nn.Module):
  config: SongLMConfig

  @nn.compact
  def __call__(self, conditions):
    return {n: _CONDITIONER_CLASSES[n](self.config, name=n)(conditions[n])
            for n in self.config.prepend}


class ConditionerProvider(nn.Module):
  """{name: (embeddings for transformer, embeddings for transformer2)} for each prepended name."""

  config: SongLMConfig

  @nn.compact
  def __call__(self, conditions):
    return Conditioners(self.config, name="conditioners")(conditions)


def forward(module: nn.Module, sequence_BxKxS, conditions: Mapping[str, object] | None,
            cache_len: int = 0):
  """The song LM's forward, creating its submodules inside `module`'s compact method.

  A plain function so that other modules (the training family's window model) run the very same
  layers under the very same parameter paths, without a wrapper level in the names. With
  `cache_len` > 0 the stacks keep keys and values in the `cache` collection: the first call
  passes the conditions (prepended) and the sequence so far, later calls `conditions=None` and
  the next steps only.
  """
  cfg = module.config
  dtype = jnp.dtype(cfg.dtype)
  b, k, s = sequence_BxKxS.shape
  if k != cfg.code_depth:
    raise ValueError(f"sequence has {k} streams, the model {cfg.code_depth}")
  missing = [] if conditions is None else [n for n in cfg.prepend if n not in conditions]
  if missing:
    raise ValueError(f"condition {missing[0]!r} is missing; the model prepends "
                     f"{', '.join(cfg.prepend)}")
  vocab_in = cfg.code_size + 2
  # Embeddings summed in float32 at least, whatever the weights are stored in.
  emb_dtype = jnp.promote_types(dtype, jnp.float32)
  x1 = nn.Embed(vocab_in, cfg.dim, dtype=emb_dtype, name="emb_0", parent=module)(
      sequence_BxKxS[:, 0])
  layer2 = [nn.Embed(vocab_in, cfg.dim, dtype=emb_dtype, name=f"layer2_emb_{q}", parent=module)
            for q in range(cfg.code_depth)]
  if module.is_initializing():  # layer2_emb.0: stored by the original, never read
    layer2[0](sequence_BxKxS[:, 0])
  x2 = sum(layer2[q](sequence_BxKxS[:, q]) for q in range(1, k))
  embedded = ({} if conditions is None else
              ConditionerProvider(cfg, name="condition_provider", parent=module)(conditions))
  for name in reversed(cfg.prepend if embedded else ()):
    c1, c2 = embedded[name]
    x1 = jnp.concatenate([c1.astype(x1.dtype), x1], axis=1)
    x2 = jnp.concatenate([c2.astype(x2.dtype), x2], axis=1)
  x1, x2 = x1.astype(dtype), x2.astype(dtype)
  logits0, hidden = CausalLM(cfg, cfg.num_layers, cfg.rope_theta, True, cache_len,
                             name="transformer", parent=module)(x1)
  fused = jnp.concatenate([x2, hidden], axis=-1)
  fused = nn.Dense(cfg.dim, dtype=dtype, name="mlp_0", parent=module)(fused)
  fused = nn.Dense(cfg.dim, dtype=dtype, name="mlp_2", parent=module)(gelu(fused))
  _, hidden2 = CausalLM(cfg, cfg.num_layers_sub, cfg.rope_theta_sub, False, cache_len,
                        name="transformer2", parent=module)(fused)
  heads = [nn.Dense(cfg.code_size + 1, use_bias=False, dtype=dtype, name=f"linears_{q}",
                    parent=module) for q in range(cfg.code_depth - 1)]
  logits = jnp.stack([logits0] + [h(hidden2) for h in heads], axis=1)
  return logits[:, :, -s:].astype(jnp.float32)


class SongLM(nn.Module):
  """Patterned codes [B, K, S] + condition inputs -> logits [B, K, S, code_size + 1] (float32).

  `conditions[name]` for each name of `config.prepend`: `description` (token ids [B, L], section
  ids [B, L]); `type_info` token ids [B, L]; `prompt_audio` codes [B, K, L]. `deterministic` is
  accepted for the training loop's contract; the original has no dropout.
  """

  config: SongLMConfig
  cache_len: int = 0  # > 0: cached decoding over at most this many positions (see `forward`)

  @nn.compact
  def __call__(self, sequence_BxKxS, conditions: Mapping[str, object] | None,
               deterministic: bool = True):
    del deterministic
    return forward(self, sequence_BxKxS, conditions, self.cache_len)


def example_conditions(config: SongLMConfig, batch: int = 1, text_len: int = 4,
                       prompt_len: int = 3) -> dict:
  """Zero-valued condition inputs of the right shapes (for init and shape tracing)."""
  z = lambda *shape: jnp.zeros(shape, jnp.int32)
  make = {"description": lambda: (z(batch, text_len), z(batch, text_len)),
          "type_info": lambda: z(batch, text_len),
          "prompt_audio": lambda: z(batch, config.code_depth, prompt_len)}
  return {n: make[n]() for n in config.prepend}


def abstract_params(config: SongLMConfig):
  """Shapes and dtypes of the parameters (jax.ShapeDtypeStruct leaves), nothing computed."""
  seq = jnp.zeros((1, config.code_depth, 2), jnp.int32)
  return jax.eval_shape(SongLM(config).init, jax.random.key(0), seq,
                        example_conditions(config))["params"]
