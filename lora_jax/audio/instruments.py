"""Instrument family: a calibrated logistic regression on timbre statistics of the sounding frames.

Features (`FEATURES`) are level-independent summaries over the frames within 40 dB of the loudest:
MFCC 1-19 means and spreads (c0, the level, only as a spread), the spread of their deltas, log
spectral centroid, bandwidth, roll-off and flatness, spectral contrast, zero crossings, and the
envelope's shape: how fast levels fall between frames and how often they do (a plucked or struck
note decays, an organ or a bowed note holds), and how peaked the onset curve is.
The model (`instrument_model.json`, `calibrated.Model`) is fitted by bench/audio_instrument_eval.py
on `instrument_set` renders: one program per render, so it names the one family that sounds most
like the whole recording; a mixture gets its dominant family or "unknown" below the calibrated
threshold, which is why the confidence goes out with the name.
"""

import dataclasses
import functools
import os

import librosa
import numpy as np

from lora_jax.audio import calibrated

MODEL = os.path.join(os.path.dirname(__file__), "instrument_model.json")
HOP = 1024  # 46 ms frames: timbre statistics need no finer step, and it halves the cost
_N_MFCC = 20
FEATURES = (tuple(f"mfcc{i}_mean" for i in range(1, _N_MFCC)) +
            tuple(f"mfcc{i}_std" for i in range(_N_MFCC)) +
            tuple(f"mfcc_delta{i}_std" for i in range(1, 13)) +
            ("log_centroid_mean", "log_centroid_std", "log_bandwidth_mean", "log_rolloff_mean",
             "log_flatness_mean", "log_flatness_std") +
            tuple(f"contrast{i}_mean" for i in range(7)) +
            ("zcr_mean", "fall_db_mean", "rise_db_mean", "falling_share", "onset_peakiness",
             "onset_std"))


@dataclasses.dataclass(frozen=True)
class Instruments:
  name: str  # an instrument family, or "unknown"
  confidence: float  # calibrated probability of the most likely family
  probabilities: tuple[tuple[str, float], ...]


def _spectral_shape(magnitude: np.ndarray, sample_rate: int) -> np.ndarray:
  """Per frame: log centroid, log bandwidth, log 85% roll-off (Hz) and log flatness; numpy, as
  librosa's versions cost more than the rest of the analysis together."""
  freqs = np.linspace(0, sample_rate / 2, magnitude.shape[0])[:, None]
  total = magnitude.sum(0) + 1e-10
  centroid = (freqs * magnitude).sum(0) / total
  bandwidth = np.sqrt((((freqs - centroid) ** 2) * magnitude).sum(0) / total)
  rolloff = freqs[np.argmax(np.cumsum(magnitude, 0) >= 0.85 * total, axis=0), 0]
  power = magnitude ** 2 + 1e-10
  flatness = np.exp(np.log(power).mean(0)) / power.mean(0)
  return np.log(np.stack([centroid + 1, bandwidth + 1, rolloff + 1, flatness]))


def features(samples: np.ndarray, sample_rate: int) -> np.ndarray:
  """The FEATURES vector of a mono signal."""
  magnitude = np.abs(librosa.stft(samples, n_fft=2048, hop_length=HOP))
  power = magnitude ** 2
  mel_db = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sample_rate,
                                                              n_mels=64), ref=np.max)
  frame_db = librosa.power_to_db(power.sum(axis=0), ref=np.max)
  active = frame_db > -40.0
  if active.sum() < 4:  # load() refuses silence; a near-silent file keeps every frame
    active = np.ones_like(active)
  mfcc = librosa.feature.mfcc(S=mel_db, n_mfcc=_N_MFCC)
  delta = librosa.feature.delta(mfcc[1:13], mode="nearest")
  shape = _spectral_shape(magnitude[:, active], sample_rate)
  bands = np.array_split(mel_db[:, active], 8, axis=0)  # peak-to-valley per band (contrast)
  contrast = [np.mean(b.max(0) - b.min(0)) for b in bands[1:]]
  frames = len(samples) // HOP
  signs = np.signbit(samples[:frames * HOP].reshape(frames, HOP))
  zcr = np.mean(signs[:, 1:] != signs[:, :-1], axis=1)[active[:frames]]
  onset = librosa.onset.onset_strength(S=mel_db, sr=sample_rate)[active]
  step = np.diff(frame_db)[active[1:] & active[:-1]]
  step = step if step.size else np.zeros(1)
  falls, rises = step[step < 0], step[step > 0]
  onset_mean = onset.mean() + 1e-9
  return np.concatenate([
      mfcc[1:, active].mean(1), mfcc[:, active].std(1), delta[:, active].std(1),
      [shape[0].mean(), shape[0].std(), shape[1].mean(), shape[2].mean(), shape[3].mean(),
       shape[3].std()],
      contrast,
      [zcr.mean() if zcr.size else 0.0, falls.mean() if falls.size else 0.0,
       rises.mean() if rises.size else 0.0, (step < -0.5).mean(), onset.max() / onset_mean,
       onset.std() / onset_mean]]).astype(np.float64)


@functools.cache
def shipped_model() -> calibrated.Model:
  with open(MODEL) as f:
    return calibrated.Model.from_json(f.read(), FEATURES)


def guess(x: np.ndarray, model: calibrated.Model | None = None) -> Instruments:
  """The instrument family of a feature vector, "unknown" below the model's threshold."""
  return Instruments(*(model or shipped_model()).guess(x))
