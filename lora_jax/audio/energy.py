"""Energy: gated RMS level in dBFS, and the classes a set of files is split into by its own levels.

The level follows ITU-R BS.1770's gating without its K-weighting filter: mean power over 400 ms
blocks (75% overlap), blocks below -70 dBFS dropped, then blocks more than 10 dB below the mean of
the rest dropped. The spread is the range between the 10th and 95th percentile of the 3 s
short-term levels (EBU R 128's loudness range, on the same unweighted power).
Classes are never fixed thresholds: `classes(levels)` splits the levels it is given at their
terciles and returns the thresholds with the labels, so an output can say what "high" meant.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Energy:
  """Level measurements of one signal."""
  level_dbfs: float  # gated mean power
  range_db: float  # short-term level spread (P95 - P10)


def _block_levels(samples: np.ndarray, sample_rate: int, block_s: float) -> np.ndarray:
  block = max(1, int(block_s * sample_rate))
  step = max(1, block // 4)
  if len(samples) < block:
    return np.array([np.mean(samples ** 2)])
  # a running sum: np.convolve with a 400 ms kernel costs seconds per minute of audio
  cumulative = np.concatenate([[0.0], np.cumsum(samples.astype(np.float64) ** 2)])
  starts = np.arange(0, len(samples) - block + 1, step)
  return (cumulative[starts + block] - cumulative[starts]) / block


def measure(samples: np.ndarray, sample_rate: int) -> Energy:
  """Gated level and range of a mono signal."""
  def db(power):
    return 10 * np.log10(np.maximum(power, 1e-12))

  blocks = _block_levels(samples, sample_rate, 0.4)
  blocks = blocks[db(blocks) > -70]
  if not len(blocks):
    return Energy(-70.0, 0.0)
  blocks = blocks[db(blocks) > db(blocks.mean()) - 10]
  short = _block_levels(samples, sample_rate, 3.0)
  short = short[db(short) > -70]
  spread = float(np.percentile(db(short), 95) - np.percentile(db(short), 10)) if len(short) else 0.0
  return Energy(round(float(db(blocks.mean())), 2), round(spread, 2))


@dataclasses.dataclass(frozen=True)
class Classes:
  """Labels for levels, split at the terciles of the levels measured together."""
  labels: tuple[str, ...]  # "low", "medium" or "high", one per level
  low_below: float  # dBFS
  high_from: float
  basis: str  # what the thresholds were measured on, for the output


def classes(levels: list[float]) -> Classes:
  """Low/medium/high by the terciles of `levels` (one file alone is "medium")."""
  values = np.asarray(levels, dtype=np.float64)
  low, high = (np.percentile(values, [100 / 3, 200 / 3]) if len(values) >= 3
               else (float(values.min()) - 1e-6, float(values.max()) + 1e-6))
  labels = tuple("low" if v < low else "high" if v >= high and len(values) >= 3 else "medium"
                 for v in values)
  return Classes(labels, round(float(low), 2), round(float(high), 2),
                 f"terciles of the {len(values)} files' gated RMS levels")
