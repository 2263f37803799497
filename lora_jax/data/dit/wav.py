"""WAV files as float arrays at a model's sample rate and channel count.

Reading: scipy's reader (PCM 8/16/24/32-bit and 32/64-bit float WAV), scaled to [-1, 1]
(integers by their full range). Channels follow the original's `set_audio_channels`: a mono
model gets the mean of all channels; a stereo model gets mono duplicated, stereo as is, and the
first two of more. Resampling: scipy's polyphase filter (`resample_poly`, Kaiser window), not
torchaudio's windowed sinc that the original uses, so a resampled file's latents differ from the
original pipeline's by that filter's difference (both are near-transparent below Nyquist). Files
already at the model's rate are not resampled.
"""

import math
import os
import warnings

import numpy as np
import scipy.io.wavfile
import scipy.signal

from lora_jax import atomic, errors


class AudioFileError(errors.UserError):
  """An audio file that cannot be used, with the file named."""


_INT_SCALE = {np.dtype(np.int16): 2.0 ** 15, np.dtype(np.int32): 2.0 ** 31}


def read(path: str) -> tuple[np.ndarray, int]:
  """(audio [channels, samples] float32 in [-1, 1] for PCM, sample rate) of a WAV file."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", scipy.io.wavfile.WavFileWarning)  # unknown chunks: skipped
      rate, data = scipy.io.wavfile.read(path)
  except Exception as e:  # pylint: disable=broad-except
    # scipy's reader fails on malformed files with whatever its parsing hits first (ValueError,
    # EOFError, even UnboundLocalError on a header cut short); all of them mean "not a WAV".
    raise AudioFileError(f"{path}: not a readable WAV file ({type(e).__name__}: {e})") from None
  if data.dtype == np.uint8:
    audio = (data.astype(np.float32) - 128.0) / 128.0
  elif data.dtype in _INT_SCALE:
    audio = (data.astype(np.float64) / _INT_SCALE[data.dtype]).astype(np.float32)
  elif data.dtype in (np.float32, np.float64):
    audio = data.astype(np.float32)
  else:
    raise AudioFileError(f"{path}: unsupported WAV sample type {data.dtype}")
  audio = audio[:, None] if audio.ndim == 1 else audio
  if audio.shape[0] == 0 or audio.shape[1] == 0:
    raise AudioFileError(f"{path}: no samples")
  if rate <= 0:
    raise AudioFileError(f"{path}: sample rate {rate} Hz")
  if not np.all(np.isfinite(audio)):
    raise AudioFileError(f"{path}: samples hold NaN or infinity")
  return np.ascontiguousarray(audio.T), int(rate)


def to_channels(audio_CxT: np.ndarray, channels: int) -> np.ndarray:
  """The original's channel rule (module docstring) for a model of 1 or 2 channels."""
  if channels == 1:
    return audio_CxT.mean(axis=0, keepdims=True)
  if channels != 2:
    raise ValueError(f"models of {channels} audio channels are not supported (1 or 2)")
  if audio_CxT.shape[0] == 1:
    return np.repeat(audio_CxT, 2, axis=0)
  return audio_CxT[:2]


def resample(audio_CxT: np.ndarray, rate: int, target: int) -> np.ndarray:
  """The audio at `target` Hz (unchanged when already there)."""
  if rate == target:
    return audio_CxT
  g = math.gcd(rate, target)
  return scipy.signal.resample_poly(audio_CxT, target // g, rate // g, axis=-1).astype(np.float32)


def load(path: str, sample_rate: int, channels: int) -> np.ndarray:
  """A WAV file as the model takes it: [channels, samples] float32 at `sample_rate`, clamped to
  [-1, 1] as the original's data loader does."""
  audio, rate = read(path)
  audio = resample(to_channels(audio, channels), rate, sample_rate)
  return np.clip(audio, -1.0, 1.0)


def write(path: str, audio_CxT: np.ndarray, sample_rate: int) -> None:
  """A 32-bit float WAV, atomically; values are written as they are (not clipped)."""
  audio = np.asarray(audio_CxT, np.float32)
  if not np.all(np.isfinite(audio)):
    raise AudioFileError(f"{path}: audio to write holds NaN or infinity")
  with atomic.atomic_path(path) as tmp:
    scipy.io.wavfile.write(tmp, sample_rate, np.ascontiguousarray(audio.T))


def find(folder: str) -> list[str]:
  """The .wav files under `folder` (any depth, any case of the suffix), in sorted path order."""
  if not os.path.isdir(folder):
    raise AudioFileError(f"audio folder {folder} does not exist")
  found = sorted(os.path.join(root, f) for root, _, files in os.walk(folder) for f in files
                 if f.lower().endswith(".wav"))
  if not found:
    raise AudioFileError(f"audio folder {folder} holds no .wav files")
  return found
