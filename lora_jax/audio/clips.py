"""Cuts a song into clips of `min_seconds` to `max_seconds` at beats, where the sound is quietest.

Candidate cut points are the beats librosa's dynamic-programming tracker places at the tempo the
analysis measured (a cut on a beat keeps the clips' bars whole). Each candidate costs the level of
the 60 ms before it relative to the song's median: a note still sounding there is what a cut
should avoid, and a phrase ending leaves a gap. From the start, the next cut is the cheapest
candidate within [min, max] seconds that leaves at least `min_seconds` after it, ties going to
the one nearest `target_seconds`; if none exists (no beats found in a long drone) the cut falls at
`target_seconds` and the clip says it is not at a beat. Cutting stops when what is left fits in
one clip, so no clip is shorter than `min_seconds` and none longer than `max_seconds` (which is at
least twice the minimum). A song no longer than `max_seconds` is one clip.
"""

import dataclasses

import librosa
import numpy as np

from lora_jax import errors
from lora_jax.audio import tempo as tempo_lib


@dataclasses.dataclass(frozen=True)
class ClipSettings:
  min_seconds: float = 10.0
  max_seconds: float = 30.0
  target_seconds: float = 20.0

  def __post_init__(self):
    if not 0 < self.min_seconds <= self.target_seconds <= self.max_seconds:
      raise errors.UserError(f"clip lengths must satisfy 0 < min {self.min_seconds} <= target "
                             f"{self.target_seconds} <= max {self.max_seconds}")
    if self.max_seconds < 2 * self.min_seconds:
      raise errors.UserError(f"max_seconds {self.max_seconds} must be at least twice min_seconds "
                             f"{self.min_seconds}, or some lengths cannot be cut into clips")


@dataclasses.dataclass(frozen=True)
class Clip:
  start: float  # seconds
  end: float
  at_beat: bool  # the cut that ends it (or the song's end) was a beat


def beat_candidates(samples: np.ndarray, sample_rate: int, bpm: float) -> tuple[np.ndarray,
                                                                                 np.ndarray]:
  """Beat times and the cost of cutting just before each (level of the 60 ms before, in dB)."""
  envelope = tempo_lib.novelty(samples, sample_rate)
  _, beats = librosa.beat.beat_track(onset_envelope=envelope, sr=sample_rate,
                                     hop_length=tempo_lib.HOP, bpm=bpm, units="time",
                                     tightness=400)
  window = int(0.06 * sample_rate)
  levels = []
  for t in beats:
    end = int(t * sample_rate)
    chunk = samples[max(0, end - window):end]
    levels.append(10 * np.log10(np.mean(chunk.astype(np.float64) ** 2) + 1e-12) if len(chunk)
                  else 0.0)
  frame = 2048
  median = 10 * np.log10(np.median(librosa.feature.rms(y=samples, frame_length=frame,
                                                       hop_length=frame)[0] ** 2) + 1e-12)
  return np.asarray(beats, np.float64), np.asarray(levels) - median


def _pick(beats, costs, lo, hi, target) -> float | None:
  inside = (beats >= lo) & (beats <= hi)
  if not inside.any():
    return None
  # cost in dB, then distance from the target length as a tie-break worth 1 dB per 5 s
  score = costs[inside] + np.abs(beats[inside] - target) / 5
  return float(beats[inside][np.argmin(score)])


def cut(samples: np.ndarray, sample_rate: int, bpm: float,
        settings: ClipSettings = ClipSettings()) -> list[Clip]:
  """The clips of a song (see the module docstring)."""
  total = len(samples) / sample_rate
  if total <= settings.max_seconds:
    return [Clip(0.0, round(total, 3), True)]
  beats, costs = beat_candidates(samples, sample_rate, bpm)
  cuts, on_beat, start = [], [], 0.0
  while total - start > settings.max_seconds:
    found = _pick(beats, costs, start + settings.min_seconds,
                  min(start + settings.max_seconds, total - settings.min_seconds),
                  start + settings.target_seconds)
    at = found if found is not None else start + settings.target_seconds
    cuts.append(at)
    on_beat.append(found is not None)
    start = at
  bounds = [0.0] + cuts + [total]
  return [Clip(round(a, 3), round(b, 3), beat) for a, b, beat in
          zip(bounds[:-1], bounds[1:], on_beat + [True])]
