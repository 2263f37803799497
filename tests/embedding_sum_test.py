"""Embeddings are summed in float32 in every family, whatever dtype the weights are stored in.

A bfloat16 copy of a base computed in float32 must give exactly what float32 weights holding the
same (bfloat16-representable) values give: a bfloat16 + bfloat16 sum would round each element
again (0.06 in the music transformer's logits before transformer.py summed in float32).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax.models import transformer
from lora_jax.models.dit import conditioned
from lora_jax.models.song import lm as song_lm

SONG = song_lm.SongLMConfig(code_size=40, dim=32, intermediate_size=48, num_heads=4,
                            num_layers=1, num_layers_sub=1, text_vocab_size=30)


def _music_transformer():
  cfg = transformer.TransformerConfig(vocab_size=64, d_model=32, n_heads=4, n_layers=1, d_ff=64,
                                      max_len=16, dropout=0.0)
  return transformer.MusicTransformer(cfg), (jnp.arange(32).reshape(2, 16) % 64,)


CASES = {
    "music_transformer": _music_transformer,
    "song_lyrics_conditioner": lambda: (song_lm.QwTokenizerConditioner(SONG), (
        (jnp.arange(12).reshape(2, 6) % 30, jnp.arange(12).reshape(2, 6) % 7),)),
    "song_audio_prompt_conditioner": lambda: (song_lm.QuantizedEmbeddingConditioner(SONG), (
        jnp.arange(30).reshape(1, 3, 10) % 40,)),
    "dit_text_embedding": lambda: (conditioned.TextEmbedding(32, 8), (
        jnp.arange(16).reshape(2, 8) % 50 + 1,)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bfloat16_weights_sum_like_float32(name):
  module, args = CASES[name]()
  params = module.init(jax.random.PRNGKey(0), *args)["params"]
  # Large entries make a bfloat16 sum round visibly: 1 + 2^-8 is not a bfloat16.
  params = jax.tree.map(lambda p: p + 1.0, params)
  stored = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  same_values = jax.tree.map(lambda p: p.astype(jnp.float32), stored)
  out_bf16 = module.apply({"params": stored}, *args)
  out_f32 = module.apply({"params": same_values}, *args)
  for a, b in zip(jax.tree.leaves(out_bf16), jax.tree.leaves(out_f32)):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
