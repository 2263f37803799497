"""Stems: harmonic and percussive parts by median-filter HPSS (librosa), and SI-SDR to score them.

No separation weights can be had offline (Demucs, Spleeter and Open-Unmix download theirs), so the
separator that runs here is harmonic/percussive, not vocals/accompaniment; the output names it.
HPSS uses soft masks (margin 1) on a 2048-point STFT and inverts with the mixture's phase, so the
two stems sum back to the mix up to the STFT's edges.
"""

import dataclasses

import librosa
import numpy as np

SEPARATOR = "harmonic/percussive HPSS (librosa median filtering); no vocal separation"


@dataclasses.dataclass(frozen=True)
class Stems:
  harmonic: np.ndarray
  percussive: np.ndarray
  separator: str = SEPARATOR


def separate(samples: np.ndarray) -> Stems:
  """Harmonic and percussive stems of a mono signal, each as long as the input."""
  spectrum = librosa.stft(samples, n_fft=2048, hop_length=512)
  harmonic, percussive = librosa.decompose.hpss(spectrum, margin=1.0)
  n = len(samples)
  return Stems(librosa.istft(harmonic, hop_length=512, length=n).astype(np.float32),
               librosa.istft(percussive, hop_length=512, length=n).astype(np.float32))


def si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
  """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al. 2019)."""
  n = min(len(estimate), len(reference))
  estimate, reference = estimate[:n].astype(np.float64), reference[:n].astype(np.float64)
  estimate, reference = estimate - estimate.mean(), reference - reference.mean()
  target = (estimate @ reference) / (reference @ reference + 1e-12) * reference
  noise = estimate - target
  return float(10 * np.log10((target @ target + 1e-12) / (noise @ noise + 1e-12)))
