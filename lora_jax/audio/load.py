"""Reads an audio file for analysis, refusing what cannot be analysed with one line that says why.

Any sample rate and channel count is accepted: channels are averaged and the signal resampled to
`SAMPLE_RATE` (soxr). Refused, each with a `BadAudio` naming the file: a file soundfile cannot
read (not audio, truncated, an unknown format), one shorter than `min_seconds`, longer than
`max_seconds` (checked from the header, before anything is read), with NaN or infinite samples,
or silent (peak below `SILENCE_DBFS`).
"""

import dataclasses
import math

import numpy as np
import soundfile
import soxr

from lora_jax import errors

SAMPLE_RATE = 22050
SILENCE_DBFS = -60.0


class BadAudio(errors.UserError):
  """A file that cannot be analysed; the message names it and says why."""


@dataclasses.dataclass(frozen=True)
class Limits:
  """What the analysis accepts."""
  min_seconds: float = 1.0  # tempo and key need a few beats; shorter is refused
  max_seconds: float = 20 * 60.0  # an album side; a 2-hour file is refused from its header


@dataclasses.dataclass(frozen=True)
class Audio:
  """Mono samples at SAMPLE_RATE, and what the file was."""
  samples: np.ndarray  # float32, mono
  sample_rate: int
  source_rate: int
  source_channels: int

  @property
  def seconds(self) -> float:
    return len(self.samples) / self.sample_rate


def load(path: str, limits: Limits = Limits()) -> Audio:
  """The file's audio, mono at SAMPLE_RATE, or a BadAudio naming the problem."""
  try:
    info = soundfile.info(path)
  except (soundfile.LibsndfileError, RuntimeError, OSError) as e:
    raise BadAudio(f"{path}: not readable as audio ({e})") from e
  if info.frames <= 0 or info.samplerate <= 0:
    raise BadAudio(f"{path}: holds no samples")
  seconds = info.frames / info.samplerate
  if seconds > limits.max_seconds:
    raise BadAudio(f"{path}: {seconds / 60:.1f} minutes is longer than the limit of "
                   f"{limits.max_seconds / 60:.0f} minutes (cut it first)")
  if seconds < limits.min_seconds:
    raise BadAudio(f"{path}: {seconds * 1000:.0f} ms is shorter than the minimum of "
                   f"{limits.min_seconds:g} s")
  try:
    data, rate = soundfile.read(path, dtype="float32", always_2d=True)
  except (soundfile.LibsndfileError, RuntimeError, OSError) as e:
    raise BadAudio(f"{path}: not readable as audio ({e})") from e
  bad = ~np.isfinite(data)
  if bad.any():
    raise BadAudio(f"{path}: {int(bad.sum())} samples are NaN or infinite")
  mono = data.mean(axis=1)
  peak = float(np.abs(mono).max()) if len(mono) else 0.0
  if peak <= 0 or 20 * math.log10(peak) < SILENCE_DBFS:
    level = "-inf" if peak <= 0 else f"{20 * math.log10(peak):.1f}"
    raise BadAudio(f"{path}: silent (peak {level} dBFS, below {SILENCE_DBFS:g})")
  if rate != SAMPLE_RATE:
    mono = soxr.resample(mono, rate, SAMPLE_RATE).astype(np.float32)
  return Audio(np.ascontiguousarray(mono), SAMPLE_RATE, rate, data.shape[1])
