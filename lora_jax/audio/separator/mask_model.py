"""Running the trained vocal/accompaniment mask model on a whole recording.

The weights file (`assets/separator/separator.safetensors`, written by
launch/train_separator.py) records its STFT and size in its metadata, so it loads without a
config; a file of another family or with missing or misshapen weights is refused by name. The
mask is computed on librosa's STFT of the recording (at the model's sample rate, resampled to
it and back when the input differs) and both stems are inverted with the mixture's phase, so they
add up to the mix apart from the STFT's edges. Deterministic: the same input gives the same
stems bit for bit.
"""

import dataclasses
import functools
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax import errors
from lora_jax.interop import flax_weights
from lora_jax.models.separator import MaskNet, MaskNetConfig

REPO = pathlib.Path(__file__).resolve().parents[3]
WEIGHTS = REPO / "assets" / "separator" / "separator.safetensors"
FAMILY = "separator"
FRAME_BLOCK = 512  # frames are padded to a multiple of this: few compilations, any length
DESCRIPTION = ("vocal/accompaniment mask model trained by this project on rendered stems "
               "(synthesised voices, not singers; see docs/audio_analysis.md)")


class SeparatorWeightsError(errors.UserError):
  """A weights file that is not a separator this code can run."""


@dataclasses.dataclass(frozen=True)
class MaskModel:
  path: str
  sample_rate: int
  n_fft: int
  hop: int
  net: MaskNet
  params: dict


def load(path: str) -> MaskModel:
  """The model in the safetensors file `path`, checked key by key."""
  meta = flax_weights.read_metadata(path)
  if meta.get("model_family") != FAMILY:
    raise SeparatorWeightsError(f"{path} holds model family {meta.get('model_family')!r}, not "
                                f"{FAMILY!r}")
  needed = ("sample_rate", "n_fft", "hop", "hidden", "n_layers", "kernel")
  missing = [k for k in needed if k not in meta]
  if missing:
    raise SeparatorWeightsError(f"{path} lacks metadata {missing}")
  n_fft = int(meta["n_fft"])
  net = MaskNet(MaskNetConfig(n_bins=n_fft // 2 + 1, hidden=int(meta["hidden"]),
                              n_layers=int(meta["n_layers"]), kernel=int(meta["kernel"])))
  abstract = jax.eval_shape(lambda: net.init(jax.random.key(0),
                                             jnp.zeros((1, 1, n_fft // 2 + 1)))["params"])
  params = flax_weights.load_params(path, abstract)
  return MaskModel(str(path), int(meta["sample_rate"]), n_fft, int(meta["hop"]), net, params)


@functools.cache
def shipped() -> MaskModel | None:
  """The model shipped in assets/, or None when its file is absent."""
  return load(str(WEIGHTS)) if WEIGHTS.is_file() else None


@functools.partial(jax.jit, static_argnums=0)
def _mask(net: MaskNet, params, magnitude_TxF):
  return net.apply({"params": params}, magnitude_TxF[None])["vocal_mask"][0]


def vocal_mask(model: MaskModel, magnitude_TxF: np.ndarray) -> np.ndarray:
  """The vocal's soft mask [T, F] of a magnitude spectrogram at the model's STFT settings."""
  frames = len(magnitude_TxF)
  padded = -(-max(frames, 1) // FRAME_BLOCK) * FRAME_BLOCK
  magnitude = np.pad(magnitude_TxF.astype(np.float32), ((0, padded - frames), (0, 0)))
  return np.asarray(_mask(model.net, model.params, magnitude))[:frames]


def separate(model: MaskModel, wave: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
  """(vocal, accompaniment) float32, each as long as the mono `wave`."""
  import librosa  # the `audio` extra
  wave = np.asarray(wave, np.float32)
  n = len(wave)
  if sample_rate != model.sample_rate:
    wave = librosa.resample(wave, orig_sr=sample_rate, target_sr=model.sample_rate)
  spectrum_FxT = librosa.stft(wave, n_fft=model.n_fft, hop_length=model.hop, window="hann",
                              center=True, pad_mode="constant")
  mask_FxT = vocal_mask(model, np.abs(spectrum_FxT).T).T
  stems = []
  for m in (mask_FxT, 1.0 - mask_FxT):
    stem = librosa.istft(spectrum_FxT * m, hop_length=model.hop, window="hann", center=True,
                         length=len(wave))
    if sample_rate != model.sample_rate:
      stem = librosa.resample(stem, orig_sr=model.sample_rate, target_sr=sample_rate)
    stems.append(np.pad(stem, (0, max(0, n - len(stem))))[:n].astype(np.float32))
  return stems[0], stems[1]
