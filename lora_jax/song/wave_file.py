"""Audio files in and out for the song pipeline: any format soundfile reads, mono, resampled.

A file that cannot be decoded is a ValueError naming it (a bad row, not a crash); a WAV is
written atomically as 16-bit PCM.
"""

import os

import numpy as np

from lora_jax import atomic


def read(path: str, sample_rate: int) -> np.ndarray:
  """Mono float32 samples of `path` at `sample_rate`."""
  import librosa  # the `audio` extra
  import soundfile
  if not os.path.isfile(path):
    raise ValueError(f"audio file {path} does not exist")
  try:
    data, rate = soundfile.read(path, dtype="float32", always_2d=True)
  except (RuntimeError, soundfile.LibsndfileError) as e:
    raise ValueError(f"cannot decode {path}: {e}") from None
  if len(data) == 0:
    raise ValueError(f"{path} holds no samples")
  wave = data.mean(axis=1)
  if not np.isfinite(wave).all():
    raise ValueError(f"{path} holds non-finite samples")
  if rate != sample_rate:
    wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate)
  return np.asarray(wave, np.float32)


def write(path: str, wave: np.ndarray, sample_rate: int) -> None:
  """`wave` (float, clipped to [-1, 1]) as a 16-bit WAV, atomically."""
  import soundfile
  with atomic.atomic_paths(path) as (tmp,):
    soundfile.write(tmp, np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
