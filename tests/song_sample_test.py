"""Sampling the song LM over the delay pattern with classifier-free guidance."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax import tree_paths
from lora_jax.models.song import delay_pattern
from lora_jax.models.song import lm as song_lm
from lora_jax.models.song import sample as song_sample

CONFIG = song_lm.SongLMConfig(code_size=24, dim=32, intermediate_size=48, num_heads=4,
                              num_layers=1, num_layers_sub=1, text_vocab_size=30,
                              prepend=("description", "type_info"))
DELAYS = (0, 2, 2)
FRAMES = 6


@functools.lru_cache(maxsize=None)
def _params():
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map_with_path(
      lambda p, l: (float(tree_paths.key_name(p[-1]) == "scale")
                    + 0.3 * rng.standard_normal(l.shape)).astype(np.float32),
      song_lm.abstract_params(CONFIG))


def _conditions():
  rng = np.random.default_rng(1)
  cond = {"description": (jnp.asarray(rng.integers(0, 30, (2, 3)), jnp.int32),
                          jnp.asarray(rng.integers(0, 14, (2, 3)), jnp.int32)),
          "type_info": jnp.asarray(rng.integers(0, 30, (2, 2)), jnp.int32)}
  null = jax.tree.map(jnp.zeros_like, cond)
  return cond, null


def _sample(params=None, **kw):
  cond, null = _conditions()
  args = dict(frames=FRAMES, delays=DELAYS, key=jax.random.key(0), top_k=8, temperature=1.0)
  args.update(kw)
  return np.asarray(song_sample.sample(params or _params(), CONFIG, cond, null, **args))


def test_same_key_same_codes_and_valid_codes():
  a, b = _sample(), _sample()
  np.testing.assert_array_equal(a, b)
  assert a.shape == (2, 3, FRAMES)
  assert ((a >= 0) & (a <= CONFIG.special_token)).all()
  assert not np.array_equal(a, _sample(key=jax.random.key(1)))


def test_greedy_codes_are_the_guided_argmax_of_the_finished_sequence():
  """Re-reading the finished sequence, every written code is the argmax of the guided logits one
  step before it: the pattern, the step alignment and the guidance mix agree with the model."""
  codes = _sample(temperature=0.0, cfg_coef=2.0)
  cond, null = _conditions()
  seq = delay_pattern.build(jnp.asarray(codes), DELAYS, CONFIG.special_token)
  model = song_lm.SongLM(CONFIG)
  lc = model.apply({"params": _params()}, seq, cond)
  lu = model.apply({"params": _params()}, seq, null)
  mixed = np.asarray(lu + (lc - lu) * 2.0)
  seq = np.asarray(seq)
  written = seq != CONFIG.special_token
  written[:, :, 0] = False
  b, q, s = np.nonzero(written)
  assert len(b) > 20
  np.testing.assert_array_equal(seq[b, q, s], mixed[b, q, s - 1].argmax(-1))


def test_end_of_sequence_stops_each_stream():
  # Heads whose end-of-sequence column is large along all-ones: with these weights every stream
  # of both rows picks it within the window (asserted: the premise, not assumed).
  params = jax.tree.map(np.array, _params())
  params["transformer"]["lm_head"]["kernel"][:, CONFIG.eos_token] = 50.0
  for q in range(2):
    params[f"linears_{q}"]["kernel"][:, CONFIG.eos_token] = 50.0
  codes = _sample(params, temperature=0.0)
  ended = codes == CONFIG.eos_token
  assert ended.any(axis=2).all()
  for b in range(2):
    for q in range(3):
      t = int(np.argmax(ended[b, q]))
      assert (codes[b, q, t + 1:] == CONFIG.special_token).all()
      assert not (codes[b, q, :t] >= CONFIG.eos_token).any()


def test_cached_sampling_gives_the_same_codes():
  for kw in ({"temperature": 0.0, "cfg_coef": 2.0}, {"temperature": 1.0}):
    cond, null = _conditions()
    args = dict(frames=FRAMES, delays=DELAYS, key=jax.random.key(3), top_k=8, **kw)
    want = song_sample.sample(_params(), CONFIG, cond, null, **args)
    got = song_sample.sample_cached(_params(), CONFIG, cond, null, **args)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_cached_logits_equal_the_full_forward():
  cond, _ = _conditions()
  codes = jnp.asarray(np.random.default_rng(4).integers(0, CONFIG.code_size, (2, 3, FRAMES)))
  seq = delay_pattern.build(codes, DELAYS, CONFIG.special_token)
  s = seq.shape[-1]
  full = np.asarray(song_lm.SongLM(CONFIG).apply({"params": _params()}, seq, cond))
  cache_len = 5 + s
  model = song_lm.SongLM(CONFIG, cache_len)
  shapes = jax.eval_shape(model.init, jax.random.key(0), seq[:, :, :1], cond)["cache"]
  cache = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
  # Prefill with the conditions and 3 steps, then one step at a time.
  got, v = model.apply({"params": _params(), "cache": cache}, seq[:, :, :3], cond,
                       mutable=["cache"])
  parts = [np.asarray(got)]
  for i in range(3, s):
    got, v = model.apply({"params": _params(), "cache": v["cache"]}, seq[:, :, i:i + 1], None,
                         mutable=["cache"])
    parts.append(np.asarray(got))
  np.testing.assert_allclose(np.concatenate(parts, axis=2), full, atol=2e-5)
