"""Small builders shared by tests: the real model at a tiny size, adapters with random factors."""

import jax
import jax.numpy as jnp

from lora_jax import lora
from lora_jax.models.transformer import MusicTransformer, TransformerConfig

TINY = TransformerConfig(vocab_size=40, d_model=32, n_heads=4, n_layers=2, d_ff=48, max_len=24,
                         dropout=0.0)


def tiny_model(config: TransformerConfig = TINY, seed: int = 0):
  """(model, params) of a tiny MusicTransformer."""
  model = MusicTransformer(config)
  params = model.init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"]
  return model, params


def random_adapter(params, spec: lora.LoraSpec, seed: int, std: float = 0.3) -> lora.Adapter:
  """An adapter whose A and B are both random: with B = 0 every merge test passes trivially."""
  targets = lora.resolve(spec, params)
  adapter = lora.init_adapter(targets, spec, jax.random.key(seed), base_params=params)
  leaves, treedef = jax.tree.flatten(adapter.params)
  keys = jax.random.split(jax.random.key(seed + 1000), len(leaves))
  leaves = [std * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  return adapter.replace(params=jax.tree.unflatten(treedef, leaves))


def tokens(batch: int = 2, length: int = 12, seed: int = 7, vocab: int = TINY.vocab_size):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, vocab)
