"""The "delay" codebook pattern of SongGeneration's LM, outside the model.

Codes [B, K, T] become the sequence [B, K, S] with S = T + max(delays) + 1: step 0 is empty (all
special tokens, the original's leading empty layout step), and stream q's code at time t sits at
step t + delays[q] + 1; every other step holds the special token. The model's logits at step s
predict the sequence at step s + 1, so the logits for code (q, t) are at step t + delays[q].
The released configs delay the mixed stream by 0 and vocal/accompaniment by 250 steps (10 s at
25 Hz): DELAYS. Checked once against the original's `DelayedPatternProvider`
(`codeclm/modules/pattern.py`, delays [0, 3, 3], T = 7): the same sequence, valid mask and
reverted logits.
"""

from typing import Sequence

import jax.numpy as jnp
import numpy as np

DELAYS = (0, 250, 250)


def _check(delays: Sequence[int], k: int) -> None:
  if len(delays) != k:
    raise ValueError(f"{len(delays)} delays {tuple(delays)} for {k} streams")
  if any(d < 0 for d in delays) or list(delays) != sorted(delays):
    raise ValueError(f"delays {tuple(delays)} must be non-negative and non-decreasing")


def sequence_length(t: int, delays: Sequence[int]) -> int:
  return t + max(delays) + 1


def build(codes_BxKxT, delays: Sequence[int], special_token: int):
  """Codes [B, K, T] -> patterned sequence [B, K, T + max(delays) + 1]."""
  b, k, t = codes_BxKxT.shape
  _check(delays, k)
  s = sequence_length(t, delays)
  rows = [jnp.pad(codes_BxKxT[:, q], ((0, 0), (d + 1, s - t - d - 1)),
                  constant_values=special_token) for q, d in enumerate(delays)]
  return jnp.stack(rows, axis=1)


def revert(sequence_BxKxS, delays: Sequence[int], t: int):
  """Patterned sequence -> codes [B, K, t] (the inverse of `build`)."""
  _check(delays, sequence_BxKxS.shape[1])
  return jnp.stack([sequence_BxKxS[:, q, d + 1:d + 1 + t] for q, d in enumerate(delays)], axis=1)


def revert_logits(logits_BxKxSxV, delays: Sequence[int], t: int):
  """Logits over the sequence [B, K, S, V] -> logits for codes [B, K, t, V] (model-output shift)."""
  _check(delays, logits_BxKxSxV.shape[1])
  return jnp.stack([logits_BxKxSxV[:, q, d:d + t] for q, d in enumerate(delays)], axis=1)


def valid_mask(delays: Sequence[int], t: int) -> np.ndarray:
  """[K, S] True where the sequence holds a real code (False: special token)."""
  s = sequence_length(t, delays)
  steps = np.arange(s)[None, :]
  d = np.asarray(delays)[:, None]
  return (steps >= d + 1) & (steps < d + 1 + t)
