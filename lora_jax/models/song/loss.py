"""Targets, masks and per-stream negative log-likelihood of the song LM on windows of songs.

A training row is a window of T frames of a song's [K, T] codes. Three things keep what the
loss sees honest (the fork trained on zero-padded silence without a mask, and only on each song's
first 30 s):
- `targets`: frames past the song's end hold the pattern's special token and are masked; a window
  that ends the song has the end-of-sequence code at frame `length` (as the original's trainer
  appends it), which is a target.
- `target_mask`: in a window that does not end the song, stream q's frame t is predicted at
  sequence step t + delays[q], whose inputs include stream 0 up to frame t + delays[q] - 1 -
  min(delays); past the window those are special tokens where the song goes on, a context the
  model never meets in generation. Those targets (the last delays[q] - min(delays) - 1 frames of
  each delayed stream) are masked; windows overlapping by max(delays) frames train every frame
  with its true context.
- `stream_nll`: summed NLL and token count per stream over the masked targets only.
"""

from typing import Sequence

import jax
import jax.numpy as jnp

from lora_jax.models.song import delay_pattern


def targets(codes_BxKxT, lengths_B, song_ends_B, *, code_size: int):
  """(codes with end-of-sequence and special tokens set, frame mask [B, T]).

  Frames t < lengths_B[b] are the song's; where song_ends_B[b], frame lengths_B[b] becomes the
  end-of-sequence code `code_size` (the caller leaves room: lengths_B[b] < T) and counts as a
  target; every later frame is the special token `code_size + 1`, masked.
  """
  t = codes_BxKxT.shape[-1]
  frames_T = jnp.arange(t)
  lengths_B = jnp.asarray(lengths_B)
  ends_B = jnp.asarray(song_ends_B, bool)
  real_BxT = frames_T[None, :] < lengths_B[:, None]
  eos_BxT = ends_B[:, None] & (frames_T[None, :] == lengths_B[:, None])
  codes = jnp.where(real_BxT[:, None, :], codes_BxKxT, code_size + 1)
  codes = jnp.where(eos_BxT[:, None, :], code_size, codes)
  return codes, real_BxT | eos_BxT


def target_mask(frame_mask_BxT, song_ends_B, delays: Sequence[int]):
  """[B, K, T] targets that count: real frames, less those whose context the window cut off."""
  t = frame_mask_BxT.shape[-1]
  d_K = jnp.asarray(delays)
  # Stream q's frame t sees stream 0 up to frame t + d_q - 1 - min(d): inside the window iff
  # t <= T - d_q + min(d).
  complete_KxT = jnp.arange(t)[None, :] <= t - d_K[:, None] + min(delays)
  ends_B = jnp.asarray(song_ends_B, bool)
  complete_BxKxT = complete_KxT[None] | ends_B[:, None, None]
  return frame_mask_BxT[:, None, :] & complete_BxKxT


def stream_nll(logits_BxKxSxV, codes_BxKxT, mask_BxKxT, delays: Sequence[int]):
  """(summed NLL [K], target count [K]) over the masked targets, in float32."""
  t = codes_BxKxT.shape[-1]
  logits = delay_pattern.revert_logits(logits_BxKxSxV, delays, t).astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  # The special token is outside the output vocabulary; masked targets index 0 instead.
  safe = jnp.where(mask_BxKxT, codes_BxKxT, 0)
  picked_BxKxT = jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  nll_K = -jnp.sum(jnp.where(mask_BxKxT, picked_BxKxT, 0.0), axis=(0, 2))
  return nll_K, jnp.sum(mask_BxKxT, axis=(0, 2)).astype(jnp.float32)
