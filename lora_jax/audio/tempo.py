"""Tempo: a comb over the autocorrelation of two novelty curves, with a prior on beat rates.

Melodies without drums (a fiddle, a flute, a choir, an organ) often change notes without a sharp
attack, so the novelty is the sum of two normalised curves: spectral flux on a log-mel spectrum
(attacks) and chroma flux (pitch changes). Its autocorrelation is scored at every candidate beat
period P by a comb (the lags P, 2P, 3P, 4P, with falling weights: a true beat repeats), times a
log-normal prior on the beat rate (centre `PRIOR_BPM`, width `PRIOR_OCTAVES`), which is what picks
the metrical level among beat, half and double. The confidence is how far the best score stands
above the best candidate that is not the same tempo within 4% (its octaves included), in [0, 1).
`octave_alternatives` are half and double the best with their own scores: the ambiguity is
reported, not hidden.
"""

import dataclasses

import librosa
import numpy as np

HOP = 512
PRIOR_BPM = 100.0
PRIOR_OCTAVES = 0.9
MIN_BPM, MAX_BPM = 30.0, 300.0


@dataclasses.dataclass(frozen=True)
class Tempo:
  """A tempo estimate."""
  bpm: float
  confidence: float  # in [0, 1): 0 = another tempo scores as well
  half_score: float  # comb score of bpm / 2 relative to the best (1.0 = as good)
  double_score: float  # comb score of 2 * bpm relative to the best


def novelty(samples: np.ndarray, sample_rate: int) -> np.ndarray:
  """Frame-rate (sample_rate / HOP) novelty: attack flux plus pitch-change flux, each unit-scaled."""
  mel = librosa.power_to_db(librosa.feature.melspectrogram(
      y=samples, sr=sample_rate, hop_length=HOP, n_fft=2048, n_mels=96), ref=np.max)
  attacks = np.maximum(np.diff(mel, axis=1), 0).mean(axis=0)
  chroma = librosa.feature.chroma_stft(S=np.abs(librosa.stft(samples, n_fft=2048, hop_length=HOP)),
                                       sr=sample_rate)
  pitch = np.maximum(np.diff(chroma, axis=1), 0).sum(axis=0)
  curves = []
  for curve in (attacks, pitch):
    curve = curve - np.convolve(curve, np.ones(16) / 16, mode="same")  # remove slow drift
    curve = np.maximum(curve, 0)
    curves.append(curve / (curve.std() + 1e-9))
  return curves[0] + curves[1]


def _comb_scores(envelope: np.ndarray, frame_rate: float, bpms: np.ndarray) -> np.ndarray:
  centred = envelope - envelope.mean()
  n = len(centred)
  spectrum = np.fft.rfft(centred, 2 * n)
  acf = np.fft.irfft(spectrum * np.conj(spectrum))[:n]
  acf = acf / (acf[0] + 1e-9)
  lags = np.arange(n)
  scores = np.zeros_like(bpms)
  for k, weight in ((1, 1.0), (2, 0.6), (3, 0.4), (4, 0.3)):
    lag = k * 60.0 * frame_rate / bpms
    scores += weight * np.interp(lag, lags, acf, right=0.0)
  return np.maximum(scores, 0)


def estimate(samples: np.ndarray, sample_rate: int) -> Tempo:
  """The tempo of a mono signal."""
  envelope = novelty(samples, sample_rate)
  frame_rate = sample_rate / HOP
  bpms = MIN_BPM * 2 ** (np.arange(0, np.log2(MAX_BPM / MIN_BPM), 1 / 240))
  prior = np.exp(-0.5 * (np.log2(bpms / PRIOR_BPM) / PRIOR_OCTAVES) ** 2)
  comb = _comb_scores(envelope, frame_rate, bpms)
  scores = comb * prior
  best = int(np.argmax(scores))
  bpm = float(bpms[best])
  ratio = bpms / bpm
  octave = np.abs(np.log2(ratio) - np.round(np.log2(ratio)))
  others = scores[(octave > np.log2(1.04)) & (np.abs(np.log2(ratio)) > np.log2(1.04))]
  rival = float(others.max()) if len(others) else 0.0
  confidence = float(max(0.0, 1 - rival / (scores[best] + 1e-12)))

  def relative(target: float) -> float:
    if not MIN_BPM <= target <= MAX_BPM:
      return 0.0
    return float(np.interp(np.log2(target), np.log2(bpms), comb) / (comb[best] + 1e-12))

  return Tempo(round(bpm, 2), round(confidence, 3), round(relative(bpm / 2), 3),
               round(relative(bpm * 2), 3))
