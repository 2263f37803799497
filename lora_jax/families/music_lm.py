"""The MusicTransformer language model as a training family: next-token cross entropy over MIDI
event tokens.

Batch: `tokens` int32 [B, T] and `mask` float32 [B, T], where mask[t] = 1 marks token t as a real
target (0 is padding). The model reads all T tokens; position t predicts token t + 1, scored where
mask[t + 1] = 1. Metric: `bits_per_token` (the loss in bits).

Pooled targets (`LmConfig.pooled_targets`): a target among these ids is scored as the class, by
the total probability of all of them: the model must predict that one of them comes, not which.
The MIDI tokens pool their pitched Program tokens (lora_jax.hierarchy): where a Program token
stands says "a note starts here", which is music; which program it names is the instrument the
source file happened to label (fiddle tunes "violin", Essen songs "voice"), which the user picks at
generation time (`launch/generate.py --program`). Scored by value, a fiddle-style adapter spent
most of what it changed on other genres' NLL on Program tokens alone. `Program_drums` is not
pooled: a drum note is another kind of event, not another label for the same one.

Sharding: attention and feed-forward kernels are split Megatron-style, the widening projections
(q/k/v, ff.in, head) on their output axis over 'model' and input axis over 'fsdp', the narrowing
ones (out_proj, ff.out) the other way round; embeddings split their width over 'fsdp'; norms and
biases are replicated.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from lora_jax.interop import model_size
from lora_jax.models.transformer import MusicTransformer, TransformerConfig
from lora_jax.train.family import Example, Family

NAME = "music_lm"

PARTITION_RULES = (
    (r"attn\.(q_proj|k_proj|v_proj)\.kernel$", P("fsdp", "model")),
    (r"attn\.out_proj\.kernel$", P("model", "fsdp")),
    (r"ff\.in\.kernel$", P("fsdp", "model")),
    (r"ff\.out\.kernel$", P("model", "fsdp")),
    (r"head\.kernel$", P("fsdp", "model")),
    (r"(tok_emb|pos_emb)\.embedding$", P(None, "fsdp")),
    (r".*", P()),  # biases and layer norms: replicated
)


@dataclasses.dataclass(frozen=True)
class LmConfig:
  """The `config.model` group of the music_lm family."""

  vocab_size: int
  d_model: int
  n_heads: int
  n_layers: int
  d_ff: int
  max_len: int
  dropout: float
  seq_len: int  # tokens per training window; <= max_len
  pooled_targets: tuple[int, ...] = ()  # ids scored as one class (see the module docstring)
  remat: bool = False  # recompute block activations in the backward pass (memory for FLOPs)
  positions: str = "learned"  # TransformerConfig.positions: "learned" or "rotary"

  def __post_init__(self):
    object.__setattr__(self, "pooled_targets", tuple(int(i) for i in self.pooled_targets))
    bad = [i for i in self.pooled_targets if not 0 <= i < self.vocab_size]
    if bad or len(set(self.pooled_targets)) != len(self.pooled_targets):
      raise ValueError(f"model.pooled_targets must be distinct ids below vocab_size "
                       f"{self.vocab_size}; got {bad or 'repeats'}")


def next_token_ce(logits_BxTxV: jax.Array, tokens_BxT: jax.Array,
                  pooled_targets: tuple[int, ...] = ()) -> jax.Array:
  """Cross entropy (nats) of each next token [B, T - 1], pooled targets scored as their class."""
  logits = logits_BxTxV[:, :-1].astype(jnp.float32)
  targets_BxT = tokens_BxT[:, 1:]
  if not pooled_targets:
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets_BxT)
  ids = jnp.asarray(pooled_targets, jnp.int32)
  in_pool = jnp.zeros(logits.shape[-1], bool).at[ids].set(True)[targets_BxT]
  own = jnp.take_along_axis(logits, targets_BxT[..., None], axis=-1)[..., 0]
  pool = jax.nn.logsumexp(logits[..., ids], axis=-1)
  return jax.nn.logsumexp(logits, axis=-1) - jnp.where(in_pool, pool, own)


def loss_fn(logits_BxTxV: jax.Array, batch, pooled_targets: tuple[int, ...] = ()
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Masked next-token cross entropy (nats per target token) and bits per token."""
  weights_BxT = batch["mask"][:, 1:].astype(jnp.float32)
  ce_BxT = next_token_ce(logits_BxTxV, batch["tokens"], pooled_targets)
  # No guard against an empty mask: 0/0 is NaN, which the loop counts and skips, never a zero loss.
  loss = jnp.sum(ce_BxT * weights_BxT) / jnp.sum(weights_BxT)
  return loss, {"bits_per_token": loss / jnp.log(2.0)}


def synthetic(config: LmConfig, n: int, seed: int) -> dict[str, np.ndarray]:
  """A learnable token set: walks of a sparse random Markov chain, padded and masked at the end.

  Every token has two successors (3:1 odds), so the best loss is about 0.56 nats/token against
  log(vocab) for a model that knows nothing; a few dozen LoRA steps already move it.
  """
  rng = np.random.default_rng(seed)
  chain = np.random.default_rng(1234).integers(0, config.vocab_size, (config.vocab_size, 2))
  tokens = np.zeros((n, config.seq_len), np.int32)
  mask = np.zeros((n, config.seq_len), np.float32)
  for i in range(n):
    length = rng.integers(config.seq_len * 3 // 4, config.seq_len + 1)
    t = rng.integers(0, config.vocab_size)
    for j in range(length):
      tokens[i, j] = t
      t = chain[t, 0 if rng.random() < 0.75 else 1]
    mask[i, :length] = 1.0
  return {"tokens": tokens, "mask": mask}


def make(config: LmConfig, compute_dtype: str) -> Family:
  """The music_lm family for a model size and a compute dtype."""
  if config.seq_len > config.max_len:
    raise ValueError(f"model.seq_len {config.seq_len} exceeds model.max_len {config.max_len}")
  size = TransformerConfig(
      vocab_size=config.vocab_size, d_model=config.d_model, n_heads=config.n_heads,
      n_layers=config.n_layers, d_ff=config.d_ff, max_len=config.max_len, dropout=config.dropout,
      positions=config.positions)
  model = MusicTransformer(dataclasses.replace(size, dtype=compute_dtype), remat=config.remat)
  return Family(
      name=NAME,
      model=model,
      batch_spec={"tokens": Example((config.seq_len,), "int32", bounds=(0, config.vocab_size),
                                    bounds_reason=f"token ids below vocab_size "
                                                  f"{config.vocab_size}"),
                  "mask": Example((config.seq_len,), "float32")},
      inputs=("tokens",),
      loss_fn=functools.partial(loss_fn, pooled_targets=config.pooled_targets),
      partition_rules=PARTITION_RULES,
      synthetic=lambda n, seed: synthetic(config, n, seed),
      loss_weight=lambda batch: jnp.sum(batch["mask"][:, 1:]),
      # The stored parameters are float32 whatever the run computed in.
      weights_metadata=model_size.metadata_of(size))
