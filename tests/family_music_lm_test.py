"""The music_lm family: masked next-token loss, learnable synthetic data, its batch contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax.families import music_lm

LM = music_lm.LmConfig(vocab_size=32, d_model=32, n_heads=4, n_layers=1, d_ff=64, max_len=32,
                       dropout=0.0, seq_len=16)


def test_loss_is_masked_mean_next_token_cross_entropy():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 32, (2, 5)).astype(np.int32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.float32)
  logits = rng.normal(size=(2, 5, 32)).astype(np.float32)
  loss, metrics = music_lm.loss_fn(jnp.asarray(logits), {"tokens": tokens, "mask": mask})
  logp = jax.nn.log_softmax(logits, axis=-1)
  terms = [-logp[b, t, tokens[b, t + 1]] for b in range(2) for t in range(4) if mask[b, t + 1]]
  np.testing.assert_allclose(loss, np.mean(terms), rtol=1e-6)
  np.testing.assert_allclose(metrics["bits_per_token"], np.mean(terms) / np.log(2), rtol=1e-6)
  # Logits whose targets are padding do not count.
  changed = logits.copy()
  changed[0, 3:] = 100.0
  np.testing.assert_allclose(
      music_lm.loss_fn(jnp.asarray(changed), {"tokens": tokens, "mask": mask})[0], loss,
      rtol=1e-6)


def test_pooled_targets_are_scored_as_their_class():
  rng = np.random.default_rng(1)
  pooled = (3, 7, 11)
  tokens = np.array([[0, 3, 5, 11, 7, 2]], np.int32)
  mask = np.ones((1, 6), np.float32)
  logits = rng.normal(size=(1, 6, 32)).astype(np.float32)
  loss, _ = music_lm.loss_fn(jnp.asarray(logits), {"tokens": tokens, "mask": mask}, pooled)
  logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  pool = lambda t: np.log(np.exp(logp[0, t, list(pooled)]).sum())
  terms = [-(pool(t) if tokens[0, t + 1] in pooled else logp[0, t, tokens[0, t + 1]])
           for t in range(5)]
  np.testing.assert_allclose(loss, np.mean(terms), rtol=1e-5)
  # Which pooled id the model favours does not matter, only their total mass.
  swapped = logits.copy()
  swapped[..., [3, 7, 11]] = logits[..., [11, 3, 7]]
  np.testing.assert_allclose(
      music_lm.loss_fn(jnp.asarray(swapped), {"tokens": tokens, "mask": mask}, pooled)[0], loss,
      rtol=1e-6)
  plain = music_lm.loss_fn(jnp.asarray(logits), {"tokens": tokens, "mask": mask})[0]
  assert plain > loss  # scored by value, the pooled targets cost more
  family = music_lm.make(music_lm.LmConfig(**{**LM.__dict__, "pooled_targets": pooled}), "float32")
  np.testing.assert_allclose(family.loss_fn(jnp.asarray(logits), {"tokens": tokens,
                                                                   "mask": mask})[0], loss)
  with pytest.raises(ValueError, match="pooled_targets must be distinct ids below vocab_size 32"):
    music_lm.LmConfig(**{**LM.__dict__, "pooled_targets": (3, 40)})


def test_an_empty_mask_is_nan_not_zero():
  tokens = np.zeros((1, 4), np.int32)
  loss, _ = music_lm.loss_fn(jnp.zeros((1, 4, 32)), {"tokens": tokens,
                                                     "mask": np.zeros((1, 4), np.float32)})
  assert np.isnan(loss)


def test_synthetic_data_is_a_learnable_chain():
  family = music_lm.make(LM, "float32")
  data = family.synthetic(64, 0)
  family.check_arrays(data, "synthetic")
  tokens, mask = data["tokens"], data["mask"]
  lengths = mask.sum(1).astype(int)
  assert lengths.min() >= 12 and np.all(mask[np.arange(16) < lengths[:, None]] == 1)
  successors = {}
  for row, n in zip(tokens, lengths):
    for a, b in zip(row[:n - 1], row[1:n]):
      successors.setdefault(int(a), set()).add(int(b))
  assert max(len(s) for s in successors.values()) <= 2  # low entropy: there is much to learn
  np.testing.assert_array_equal(family.synthetic(64, 0)["tokens"], tokens)


def test_family_contract_errors():
  with pytest.raises(ValueError, match=r"model.seq_len 64 exceeds model.max_len 32"):
    music_lm.make(music_lm.LmConfig(**{**LM.__dict__, "seq_len": 64}), "float32")
  family = music_lm.make(LM, "float32")
  with pytest.raises(ValueError, match=r"array 'tokens' is int64\[4, 16\], family music_lm "
                                       r"needs int32\[N, 16\]"):
    family.check_arrays({"tokens": np.zeros((4, 16), np.int64),
                         "mask": np.zeros((4, 16), np.float32)}, "x.npz")
  with pytest.raises(ValueError, match=r"holds arrays \['tokens'\], family music_lm needs "
                                       r"\['mask', 'tokens'\]"):
    family.check_arrays({"tokens": np.zeros((4, 16), np.int32)}, "x.npz")
  assert family.abstract_batch(2, 8)["tokens"].shape == (2, 8, 16)
