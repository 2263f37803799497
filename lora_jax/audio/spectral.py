"""Spectral statistics of audio for comparing sets of clips: log-mel spectrograms, the spectral
centroid, a timbre vector (mean MFCCs without c0) and reconstruction SNRs. Numpy only.

Mel bands are HTK's formula with triangular filters; MFCCs the orthonormal DCT-II of the log mel
energies. c0 (overall level) is dropped from the timbre vector, so a quieter or louder clip of the
same instrument stays close: the vector compares spectral shape, what tells instruments apart.
"""

import numpy as np
import scipy.fft

N_FFT = 512
HOP = 128
N_MELS = 40
N_MFCC = 13
_FLOOR = 1e-10


def _power(samples: np.ndarray) -> np.ndarray:
  """|STFT|^2 [frames, N_FFT / 2 + 1] (Hann window, frames inside the signal)."""
  x = np.asarray(samples, np.float64).reshape(-1)
  if len(x) < N_FFT:
    x = np.pad(x, (0, N_FFT - len(x)))
  frames = 1 + (len(x) - N_FFT) // HOP
  index = np.arange(frames)[:, None] * HOP + np.arange(N_FFT)[None, :]
  return np.abs(np.fft.rfft(x[index] * np.hanning(N_FFT + 1)[:-1], axis=-1)) ** 2


def mel_filters(sample_rate: int) -> np.ndarray:
  """[N_MELS, N_FFT / 2 + 1] triangular filters from 0 Hz to Nyquist."""
  mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)
  hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)
  edges = hz(np.linspace(mel(0.0), mel(sample_rate / 2), N_MELS + 2))
  freqs = np.fft.rfftfreq(N_FFT, 1.0 / sample_rate)
  lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  return np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))


def mel_power(samples: np.ndarray, sample_rate: int) -> np.ndarray:
  """Mel band energies [frames, N_MELS]."""
  return _power(samples) @ mel_filters(sample_rate).T


def log_mel_db(samples: np.ndarray, sample_rate: int) -> np.ndarray:
  """10 log10 of the mel energies [frames, N_MELS] (for pictures and distances)."""
  return 10.0 * np.log10(mel_power(samples, sample_rate) + _FLOOR)


def centroid_hz(samples: np.ndarray, sample_rate: int) -> float:
  """Spectral centroid in Hz, frames weighted by their energy (silence does not count)."""
  power = _power(samples)
  freqs = np.fft.rfftfreq(N_FFT, 1.0 / sample_rate)
  return float(np.sum(power * freqs) / max(np.sum(power), _FLOOR))


def timbre(samples: np.ndarray, sample_rate: int) -> np.ndarray:
  """Mean MFCCs 1..12 over the frames above -60 dB of the loudest one."""
  mels = mel_power(samples, sample_rate)
  energy = mels.sum(axis=1)
  loud = energy > energy.max() * 1e-6
  mfcc = scipy.fft.dct(np.log(mels[loud] + _FLOOR), type=2, norm="ortho", axis=1)[:, 1:N_MFCC]
  return mfcc.mean(axis=0)


def mel_snr_db(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> float:
  """10 log10(||M||^2 / ||M - M'||^2) on mel magnitudes (sqrt of band energy): how close the
  spectrogram is, ignoring phase (a perfect copy: infinity)."""
  n = min(len(reference), len(estimate))
  m_ref = np.sqrt(mel_power(reference[:n], sample_rate))
  m_est = np.sqrt(mel_power(estimate[:n], sample_rate))
  err = np.sum((m_ref - m_est) ** 2)
  return float(10 * np.log10(np.sum(m_ref ** 2) / max(err, _FLOOR)))


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
  """Waveform SNR in dB (phase counts)."""
  n = min(len(reference), len(estimate))
  err = np.sum((reference[:n] - estimate[:n]) ** 2)
  return float(10 * np.log10(np.sum(reference[:n] ** 2) / max(err, _FLOOR)))
