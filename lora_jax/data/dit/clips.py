"""Cutting audio into the clips a pre-encoded data set holds, with the original's metadata.

A file becomes consecutive clips of `sample_size` samples (the model config's `sample_size`), the
last zero-padded; or, with no clip size, one clip of the whole file padded to a multiple of the
downsampling ratio. The metadata is what stable-audio-tools' `PadCrop_Normalized_T` gives a clip
cut at that offset: `seconds_start` = floor(offset / rate), `seconds_total` = ceil(file samples /
rate), both whole seconds; `padding_mask` has one entry per latent frame, 1 where the frame's
first sample is real audio (the original's nearest-neighbour shrinking of its sample mask).
"""

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Clip:
  index: int  # position in its file
  audio: np.ndarray  # [channels, samples], zero-padded
  seconds_start: int
  seconds_total: int
  padding_mask: tuple[int, ...]  # per latent frame


def cut(audio_CxT: np.ndarray, sample_rate: int, downsampling_ratio: int,
        sample_size: int | None) -> list[Clip]:
  """The clips of one file's audio (already at the model's rate and channels)."""
  total = audio_CxT.shape[1]
  if sample_size is None:
    size = math.ceil(total / downsampling_ratio) * downsampling_ratio
    starts = [0]
  else:
    if sample_size % downsampling_ratio:
      raise ValueError(f"sample_size {sample_size} is not a multiple of the autoencoder's "
                       f"downsampling ratio {downsampling_ratio}")
    size = sample_size
    starts = list(range(0, total, sample_size))
  out = []
  for i, start in enumerate(starts):
    real = min(total - start, size)
    clip = np.zeros((audio_CxT.shape[0], size), np.float32)
    clip[:, :real] = audio_CxT[:, start:start + real]
    frames = size // downsampling_ratio
    mask = tuple(int(f * downsampling_ratio < real) for f in range(frames))
    out.append(Clip(i, clip, math.floor(start / sample_rate), math.ceil(total / sample_rate),
                    mask))
  return out
