"""Key: a CQT chroma profile correlated with the 24 rotations of a major and a minor key profile.

Three published profile pairs are offered; `DEFAULT_PROFILE` is the one that measured best on the
rendered evaluation set (bench/audio_analysis_eval.py prints all three). Every key is scored
(Pearson correlation); the result keeps the best, the runner-up and a confidence: the gap between
them over the best's distance from a perfect 1, clipped to [0, 1].
"""

import dataclasses

import librosa
import numpy as np

PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
HOP = 2048

# Major and minor profiles, C first.
PROFILES = {
    # Krumhansl & Kessler (1982), probe-tone ratings.
    "krumhansl": ((6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88),
                  (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)),
    # Temperley (1999), "What's key for key?" revised Kostka-Payne profiles.
    "temperley": ((5.0, 2.0, 3.5, 2.0, 4.5, 4.0, 2.0, 4.5, 2.0, 3.5, 1.5, 4.0),
                  (5.0, 2.0, 3.5, 4.5, 2.0, 4.0, 2.0, 4.5, 3.5, 2.0, 1.5, 4.0)),
    # Albrecht & Shanahan (2013), pitch-class distributions of a corpus of common-practice pieces.
    "albrecht": ((0.238, 0.006, 0.111, 0.006, 0.137, 0.094, 0.016, 0.214, 0.009, 0.080, 0.008,
                  0.081),
                 (0.220, 0.006, 0.104, 0.123, 0.019, 0.103, 0.012, 0.214, 0.062, 0.022, 0.061,
                  0.052)),
}
DEFAULT_PROFILE = "albrecht"


@dataclasses.dataclass(frozen=True)
class Key:
  """A key estimate with every key's score."""
  tonic: int  # pitch class, 0 = C
  mode: str  # "major" or "minor"
  confidence: float
  runner_up: str
  # 24 correlations (here) or probabilities (key_model): C..B major, then C..B minor
  scores: tuple[float, ...]

  @property
  def name(self) -> str:
    return key_name(self.tonic, self.mode)


def key_name(tonic: int, mode: str) -> str:
  return f"{PITCH_NAMES[tonic]} {mode}"


def chroma_frames(samples: np.ndarray, sample_rate: int) -> np.ndarray:
  """CQT chroma (C2 to C8), 12 x frames, each frame scaled to a maximum of 1, C first."""
  return librosa.feature.chroma_cqt(y=samples, sr=sample_rate, hop_length=HOP, n_octaves=6,
                                    fmin=librosa.note_to_hz("C2"))


def chroma_profile(samples: np.ndarray, sample_rate: int) -> np.ndarray:
  """Twelve pitch-class energies (CQT chroma summed over time), C first."""
  return chroma_frames(samples, sample_rate).sum(axis=1)


def scores(profile: np.ndarray, which: str = DEFAULT_PROFILE) -> np.ndarray:
  """Correlation of `profile` with each of the 24 keys (C..B major, then C..B minor)."""
  major, minor = (np.asarray(p, dtype=np.float64) for p in PROFILES[which])
  out = np.empty(24)
  for mode, base in enumerate((major, minor)):
    for tonic in range(12):
      out[12 * mode + tonic] = np.corrcoef(profile, np.roll(base, tonic))[0, 1]
  return np.nan_to_num(out, nan=-1.0)


def from_scores(all_scores: np.ndarray) -> Key:
  order = np.argsort(all_scores)[::-1]
  best, second = int(order[0]), int(order[1])
  gap = all_scores[best] - all_scores[second]
  confidence = float(np.clip(gap / max(1 - all_scores[second], 1e-6), 0, 1))
  return Key(best % 12, ("major", "minor")[best // 12], round(confidence, 3),
             key_name(second % 12, ("major", "minor")[second // 12]),
             tuple(round(float(s), 4) for s in all_scores))


def estimate(samples: np.ndarray, sample_rate: int, which: str = DEFAULT_PROFILE) -> Key:
  """The key of a mono signal."""
  return from_scores(scores(chroma_profile(samples, sample_rate), which))
