"""Songs cut into windows: every frame of every stream and the end of sequence are trained at
least once, each with the context the whole song gives it."""

import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax.data.song import windows as song_windows
from lora_jax.models.song import loss as song_lm_loss

DELAYS = (0, 3, 3)


@pytest.mark.parametrize("t", [1, 7, 8, 9, 23, 40])
def test_every_target_counts_at_least_once(t):
  frames = 8
  codes = np.arange(3 * t, dtype=np.int32).reshape(3, t) % 50
  w = song_windows.cut(codes, frames, overlap=max(DELAYS))
  assert w["song_end"][-1] == 1 and not w["song_end"][:-1].any()
  assert w["length"][-1] < frames
  _, frame_mask = song_lm_loss.targets(jnp.asarray(w["codes"]), w["length"], w["song_end"] > 0,
                                       code_size=100)
  mask = np.asarray(song_lm_loss.target_mask(frame_mask, w["song_end"] > 0, DELAYS))
  covered = np.zeros((3, t + 1), int)  # frame t is the end of sequence
  hop = frames - max(DELAYS)
  for i in range(len(w["length"])):
    start = i * hop
    n = min(frames, t + 1 - start)
    covered[:, start:start + n] += mask[i, :, :n]
    # The window holds the song's codes where it holds the song.
    np.testing.assert_array_equal(w["codes"][i, :, :w["length"][i]],
                                  codes[:, start:start + w["length"][i]])
  assert (covered >= 1).all(), covered


def test_bad_overlap_is_refused():
  with pytest.raises(ValueError, match="overlap 8 must be at least 0 and below the window's 8"):
    song_windows.cut(np.zeros((3, 20), np.int32), 8, 8)
