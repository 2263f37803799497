"""Whole songs cut into the song_lm family's training windows (not only each song's start).

A song's codes [K, T] become windows of `frames` frames starting every `frames - overlap`
frames. A window that does not reach the song's end is full (`song_end` 0); the window that does
has fewer than `frames` real frames (`length`), so frame `length` can hold the end-of-sequence
target, and is padded (`song_end` 1). With `overlap` >= max(delays), the frames that
`song_lm_loss.target_mask` drops at a cut window's end (the delayed streams' last frames, whose
stream-0 context the cut removed) are trained in the next window, so every frame of every stream
and the end of sequence count at least once.
"""

import numpy as np


def cut(codes_KxT: np.ndarray, frames: int, overlap: int) -> dict[str, np.ndarray]:
  """{'codes' [N, K, frames], 'length' [N], 'song_end' [N]} (int32) covering the whole song."""
  k, t = codes_KxT.shape
  if not 0 <= overlap < frames:
    raise ValueError(f"overlap {overlap} must be at least 0 and below the window's {frames} "
                     "frames")
  if t < 1:
    raise ValueError("a song of 0 frames has nothing to train on")
  hop = frames - overlap
  windows, lengths, ends = [], [], []
  start = 0
  while True:
    rest = t - start
    window = np.zeros((k, frames), np.int32)
    if rest < frames:  # the last window: room for the end-of-sequence frame
      window[:, :rest] = codes_KxT[:, start:]
      windows.append(window)
      lengths.append(rest)
      ends.append(1)
      break
    window[:] = codes_KxT[:, start:start + frames]
    windows.append(window)
    lengths.append(frames)
    ends.append(0)
    start += hop
  return {"codes": np.stack(windows), "length": np.asarray(lengths, np.int32),
          "song_end": np.asarray(ends, np.int32)}
