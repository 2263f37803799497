"""Song LM targets and masks: padding never enters the loss, cut-off context is masked, and the
per-stream NLL is the log-softmax at the targets."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax import tree_paths
from lora_jax.models.song import delay_pattern
from lora_jax.models.song import lm as song_lm
from lora_jax.models.song import loss as L

CONFIG = song_lm.SongLMConfig(code_size=40, dim=32, intermediate_size=48, num_heads=4,
                              num_layers=1, num_layers_sub=1, text_vocab_size=30,
                              prepend=("type_info",))
DELAYS = (0, 3, 3)


@functools.lru_cache(maxsize=None)
def _params():
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map_with_path(
      lambda p, l: (float(tree_paths.key_name(p[-1]) == "scale")
                    + 0.3 * rng.standard_normal(l.shape)).astype(np.float32),
      song_lm.abstract_params(CONFIG))


@jax.jit
def _logits(codes_BxKxT):
  seq = delay_pattern.build(codes_BxKxT, DELAYS, CONFIG.special_token)
  cond = {"type_info": jnp.ones((codes_BxKxT.shape[0], 2), jnp.int32)}
  return song_lm.SongLM(CONFIG).apply({"params": _params()}, seq, cond)


def _codes(b, t, seed=1):
  return jnp.asarray(np.random.default_rng(seed).integers(0, CONFIG.code_size, (b, 3, t)))


def test_targets_set_eos_and_special_tokens():
  codes, frames = L.targets(_codes(2, 6), jnp.array([6, 3]), jnp.array([False, True]),
                            code_size=CONFIG.code_size)
  codes, frames = np.asarray(codes), np.asarray(frames)
  assert frames.tolist() == [[True] * 6, [True] * 4 + [False] * 2]
  assert (codes[1, :, 3] == CONFIG.eos_token).all()
  assert (codes[1, :, 4:] == CONFIG.special_token).all()
  np.testing.assert_array_equal(codes[0], np.asarray(_codes(2, 6))[0])


def test_padding_never_enters_the_loss():
  raw = _codes(2, 8)
  lengths, ends = jnp.array([8, 4]), jnp.array([False, True])
  codes, frames = L.targets(raw, lengths, ends, code_size=CONFIG.code_size)
  mask = L.target_mask(frames, ends, DELAYS)
  nll, count = L.stream_nll(_logits(codes), codes, mask, DELAYS)
  # Whatever the padded frames held before `targets`, the loss is the same.
  noisy = raw.at[1, :, 5:].set(7)
  codes2, _ = L.targets(noisy, lengths, ends, code_size=CONFIG.code_size)
  nll2, _ = L.stream_nll(_logits(codes2), codes2, mask, DELAYS)
  np.testing.assert_array_equal(nll, nll2)
  # Row 0 (not the song's end) keeps stream 0's 8 frames and the delayed streams' frames 0..5
  # (frame t sees stream 0 up to frame t + 2); row 1 keeps its 4 frames and the end-of-sequence
  # code on every stream.
  assert np.asarray(count).tolist() == [8 + 5, 6 + 5, 6 + 5]
  # The NLL is -log softmax at the targets.
  logp = jax.nn.log_softmax(delay_pattern.revert_logits(_logits(codes), DELAYS, 8), axis=-1)
  m = np.asarray(mask)
  c = np.asarray(codes)
  want = [-sum(float(logp[b, q, t, c[b, q, t]]) for b in range(2) for t in range(8) if m[b, q, t])
          for q in range(3)]
  np.testing.assert_allclose(nll, want, rtol=1e-6)


def test_kept_targets_see_the_same_context_as_in_the_whole_song():
  """A window cut from a longer song: every target the mask keeps has the logits it has when the
  model reads the whole song, so no target is trained on a context generation never shows."""
  song = _codes(1, 12, seed=4)
  window = song[:, :, :8]
  codes, frames = L.targets(window, jnp.array([8]), jnp.array([False]),
                            code_size=CONFIG.code_size)
  mask = np.asarray(L.target_mask(frames, jnp.array([False]), DELAYS))
  cut = np.asarray(delay_pattern.revert_logits(_logits(codes), DELAYS, 8))
  whole = np.asarray(delay_pattern.revert_logits(_logits(song), DELAYS, 12))[:, :, :8]
  np.testing.assert_allclose(cut[mask], whole[mask], atol=1e-5)
  # And the masked ones do differ: masking them is needed, not just harmless.
  assert np.abs(cut[~mask] - whole[~mask]).max() > 1e-3
