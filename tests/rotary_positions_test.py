"""Rotary positions in the music transformer: the PyTorch twin agrees, cached decoding agrees with
the whole-sequence forward, the song LM's rotary is unchanged, and files from before the field
read as learned positions."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lora_jax.hierarchy import base_file
from lora_jax.interop import flax_weights, model_size, torch_convert
from lora_jax.models import rotary, transformer
from third_party.music_transformer_torch import MusicTransformer as TorchMusicTransformer

ROTARY = transformer.TransformerConfig(vocab_size=40, d_model=32, n_heads=4, n_layers=2, d_ff=48,
                                       max_len=24, dropout=0.0, positions="rotary")


def _params(config, seed=1):
  abstract = transformer.abstract_params(config)
  leaves, treedef = jax.tree.flatten(abstract)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [0.5 * jax.random.normal(k, l.shape, jnp.float32)
                                      for k, l in zip(keys, leaves)])


def test_rotary_has_no_position_table_and_the_twin_agrees():
  params = _params(ROTARY)
  assert "pos_emb" not in params and "pos_emb" in _params(
      transformer.TransformerConfig(**{**ROTARY.__dict__, "positions": "learned"}))
  twin = TorchMusicTransformer(ROTARY).eval()
  twin.load_state_dict(torch_convert.flax_to_state_dict(params), strict=True)
  tokens = np.random.default_rng(0).integers(0, ROTARY.vocab_size, (2, ROTARY.max_len))
  with torch.no_grad():
    want = twin(torch.from_numpy(tokens)).numpy()
  got = np.asarray(transformer.MusicTransformer(ROTARY).apply({"params": params},
                                                             jnp.asarray(tokens)))
  assert float(np.abs(got - want).max()) <= 1e-5


def test_a_logit_depends_on_relative_positions_only():
  """Rotary: shifting every position by the same amount changes nothing (learned would)."""
  params = _params(ROTARY)
  model = transformer.MusicTransformer(ROTARY)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, ROTARY.vocab_size, (1, 12)))
  at = lambda start: model.apply({"params": params}, tokens,
                                 positions_BxT=start + jnp.arange(12)[None])
  np.testing.assert_allclose(at(0), at(9), atol=2e-5)
  learned = transformer.TransformerConfig(**{**ROTARY.__dict__, "positions": "learned"})
  lp = _params(learned)
  lm = transformer.MusicTransformer(learned)
  shift = lambda s: lm.apply({"params": lp}, tokens, positions_BxT=s + jnp.arange(12)[None])
  assert float(jnp.abs(shift(0) - shift(9)).max()) > 1e-2


def test_cached_decoding_equals_the_whole_sequence():
  params = _params(ROTARY)
  model = transformer.MusicTransformer(ROTARY)
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, ROTARY.vocab_size, (2, 16)))
  full = model.apply({"params": params}, tokens)
  cache = model.init(jax.random.key(0), tokens[:, :1], decode=True)["cache"]
  steps = []
  for i in range(tokens.shape[1]):
    logits, variables = model.apply({"params": params, "cache": cache}, tokens[:, i:i + 1],
                                    decode=True, mutable=["cache"])
    cache = variables["cache"]
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=2e-5)


def test_tables_rotate_pairs_by_position_times_frequency():
  cos, sin = rotary.tables(jnp.arange(3), 4, 100.0, jnp.float32)
  angles = np.array([[p, p / 10.0, p, p / 10.0] for p in range(3)])  # theta^(-2i/4): 1, 1/10
  np.testing.assert_allclose(cos, np.cos(angles), rtol=1e-6)
  np.testing.assert_allclose(sin, np.sin(angles), rtol=1e-6, atol=1e-7)
  x = jnp.asarray([[[[1.0, 0.0, 0.0, 0.0]]]])  # [batch, time, heads, 4], at position 2
  c, s = rotary.tables(jnp.full((1, 1), 2), 4, 100.0, jnp.float32)
  np.testing.assert_allclose(rotary.apply(x, c, s)[0, 0, 0],
                             [np.cos(2.0), 0.0, np.sin(2.0), 0.0], atol=1e-6)


def test_the_shipped_base_before_rotary_reads_as_learned(tmp_path):
  """A hierarchy model file written before the field: its metadata has no `positions`."""
  learned = transformer.TransformerConfig(**{**ROTARY.__dict__, "positions": "learned"})
  path = str(tmp_path / "old.safetensors")
  old = {k: v for k, v in learned.__dict__.items() if k not in ("dtype", "positions")}
  flax_weights.save_params(_params(learned), path, {
      "format": base_file.FORMAT, "model_family": base_file.FAMILY,
      "model": json.dumps(old), "extra": "{}"})
  model = base_file.load_model(path)
  assert model.settings.positions == "learned" and "pos_emb" in model.params


def test_files_from_before_the_field_read_as_learned_and_a_mismatch_is_named():
  old = {"vocab_size": 40, "d_model": 32, "n_heads": 4, "n_layers": 2, "d_ff": 48,
         "max_len": 24, "dropout": 0.1}
  old_file = {"format": model_size.HIERARCHY_FORMAT, "model": json.dumps(old)}
  assert model_size.recorded(old_file, "f").positions == "learned"
  assert model_size.recorded({model_size.METADATA_KEY: json.dumps({**old, "dtype": "float32"})},
                             "f").positions == "learned"
  recorded = model_size.recorded({"format": model_size.HIERARCHY_FORMAT,
                                  "model": json.dumps({**old, "positions": "rotary"})}, "f")
  assert recorded.positions == "rotary"
  with pytest.raises(model_size.ModelSizeError, match="positions=rotary but the config says "
                                                      "positions=learned"):
    model_size.resolve({"format": model_size.HIERARCHY_FORMAT,
                        "model": json.dumps({**old, "positions": "rotary"})},
                       {**old, "dtype": "float32", "positions": "learned"}, "f")


@pytest.mark.parametrize("change, message", [
    ({"positions": "alibi"}, "positions 'alibi' is not one of learned, rotary"),
    ({"d_model": 36, "n_heads": 4}, "rotary positions need an even head size, got 9"),
])
def test_bad_positions_are_refused(change, message):
  with pytest.raises(ValueError, match=message):
    transformer.TransformerConfig(**{**ROTARY.__dict__, **change})
