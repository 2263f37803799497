"""How far a codec round trip is from the original audio: the figures README.md states.

- `log_spectral_distance`: per STFT frame, the RMS over frequency bins of the difference of the
  two power spectra in dB (both floored 80 dB below the reference's loudest bin), averaged over
  frames (0 = identical; phase-blind, so Griffin-Lim's phase is not counted against it, only the
  magnitudes it failed to reach).
- `code_mel_snr`: `mel_snr` of the codec's decoded log-mel frames against the original's, before
  any synthesis: the quantiser's share of the error.
- `mel_snr`: 10 log10(energy of the reference mel magnitude / energy of the difference), dB.
Both compare equal-length signals on the same 100 Hz STFT grid.
"""

import numpy as np

_EPS = 1e-10


def _power(wave: np.ndarray, sample_rate: int) -> np.ndarray:
  import librosa
  hop = sample_rate // 100
  return np.abs(librosa.stft(np.asarray(wave, np.float32), n_fft=4 * hop, hop_length=hop)) ** 2


def _same_length(reference: np.ndarray, estimate: np.ndarray):
  n = min(len(reference), len(estimate))
  return reference[:n], estimate[:n]


def log_spectral_distance(reference: np.ndarray, estimate: np.ndarray, sample_rate: int
                          ) -> float:
  """Mean over frames of the RMS dB difference of the power spectra (frames where the
  reference is silent, below -60 dB of its loudest frame, are left out)."""
  reference, estimate = _same_length(reference, estimate)
  p_ref, p_est = _power(reference, sample_rate), _power(estimate, sample_rate)
  floor = p_ref.max() * 1e-8  # an 80 dB range: bins below it are silence in both
  db = lambda p: 10.0 * np.log10(np.maximum(p, floor) + _EPS)
  per_frame = np.sqrt(np.mean((db(p_ref) - db(p_est)) ** 2, axis=0))
  loudness = p_ref.sum(0)
  audible = loudness > loudness.max() * 1e-6
  return float(per_frame[audible].mean())


def mel_snr(reference: np.ndarray, estimate: np.ndarray, sample_rate: int, n_mels: int = 80
            ) -> float:
  """Signal-to-noise ratio of the estimate's mel magnitude against the reference's, dB."""
  import librosa
  reference, estimate = _same_length(reference, estimate)
  hop = sample_rate // 100
  mel = lambda w: librosa.feature.melspectrogram(y=np.asarray(w, np.float32), sr=sample_rate,
                                                 n_fft=4 * hop, hop_length=hop, n_mels=n_mels,
                                                 power=1.0)
  m_ref, m_est = mel(reference), mel(estimate)
  return float(10.0 * np.log10(np.sum(m_ref ** 2) / max(np.sum((m_ref - m_est) ** 2), _EPS)))


def code_mel_snr(logmel_TxM: np.ndarray, decoded_TxM: np.ndarray) -> float:
  """SNR in dB of decoded log-mel frames against the original frames, on mel magnitudes."""
  ref, est = np.exp(logmel_TxM / 2.0), np.exp(decoded_TxM / 2.0)
  return float(10.0 * np.log10(np.sum(ref ** 2) / max(np.sum((ref - est) ** 2), _EPS)))
