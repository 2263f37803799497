"""Stems: vocal and accompaniment by the project's trained mask model, HPSS when it is absent.

`separate` runs the user's Demucs model when one is given (`separator.demucs_model`: the `demucs`
package installed and a model file of theirs, read weights-only; nothing is downloaded), else the
mask model shipped in assets/separator/ (`lora_jax.audio.separator`, trained
on stems the project renders; its "vocals" are synthesised voices, see docs/audio_analysis.md)
and gives stems 'vocal' and 'accompaniment'. Without that file it falls back to librosa's
median-filter HPSS, stems 'harmonic' and 'percussive', which is no vocal separator. Either way
`Stems.separator` says which ran, and the output carries it. HPSS uses soft masks (margin 1) on a
2048-point STFT and inverts with the mixture's phase, so the two stems sum back to the mix up to
the STFT's edges; so do the mask model's.
"""

import dataclasses

import librosa
import numpy as np

from lora_jax.audio import load
from lora_jax.audio.separator import demucs_model, mask_model

HPSS = ("harmonic/percussive HPSS (librosa median filtering); no vocal separation: the trained "
        f"separator's weights ({mask_model.WEIGHTS}) are absent")


@dataclasses.dataclass(frozen=True)
class Stems:
  parts: dict[str, np.ndarray]  # stem name -> samples, each as long as the input
  separator: str  # what made them


def hpss(samples: np.ndarray) -> Stems:
  """Harmonic and percussive stems of a mono signal."""
  spectrum = librosa.stft(samples, n_fft=2048, hop_length=512)
  harmonic, percussive = librosa.decompose.hpss(spectrum, margin=1.0)
  n = len(samples)
  inverse = lambda s: librosa.istft(s, hop_length=512, length=n).astype(np.float32)
  return Stems({"harmonic": inverse(harmonic), "percussive": inverse(percussive)}, HPSS)


def demucs_description(model: demucs_model.DemucsModel) -> str:
  return f"Demucs ({model.path}): vocals, and the sum of its other sources as the accompaniment"


def separator(demucs: demucs_model.DemucsModel | None = None) -> str:
  """What `separate` runs here: Demucs when given, else the mask model, else HPSS."""
  if demucs is not None:
    return demucs_description(demucs)
  return mask_model.DESCRIPTION if mask_model.shipped() is not None else HPSS


def separate(samples: np.ndarray, sample_rate: int = load.SAMPLE_RATE,
             demucs: demucs_model.DemucsModel | None = None) -> Stems:
  """Vocal and accompaniment stems by the user's Demucs model when given (`demucs_model.load`),
  else by the shipped mask model, else HPSS's harmonic and percussive stems."""
  if demucs is not None:
    vocal, accompaniment = demucs_model.separate(demucs, samples, sample_rate)
    return Stems({"vocal": vocal, "accompaniment": accompaniment}, demucs_description(demucs))
  model = mask_model.shipped()
  if model is None:
    return hpss(samples)
  vocal, accompaniment = mask_model.separate(model, samples, sample_rate)
  return Stems({"vocal": vocal, "accompaniment": accompaniment}, mask_model.DESCRIPTION)


def si_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
  """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al. 2019)."""
  n = min(len(estimate), len(reference))
  estimate, reference = estimate[:n].astype(np.float64), reference[:n].astype(np.float64)
  estimate, reference = estimate - estimate.mean(), reference - reference.mean()
  target = (estimate @ reference) / (reference @ reference + 1e-12) * reference
  noise = estimate - target
  return float(10 * np.log10((target @ target + 1e-12) / (noise @ noise + 1e-12)))
