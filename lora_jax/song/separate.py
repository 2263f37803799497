"""The vocal/accompaniment split behind the song tokens' streams 1 and 2, offline.

SongGeneration tokenizes a song as three streams: the mix, the vocal and the accompaniment, the
last two from Demucs, whose weights are downloaded at run time and so cannot run here. A
separator is any function (mono float32 wave, sample rate) -> (vocal, accompaniment), each the
wave's length; `SEPARATORS` names them and the codec file records which one made its streams, so
tokens of one dataset never mix two splits.

  mask  the project's own vocal/accompaniment mask model (`lora_jax.audio.separator`, trained on
        rendered stems whose "vocals" are synthesised voices; measured in docs/audio_analysis.md).
        The default wherever its weights (assets/separator/separator.safetensors) are present.
  hpss  librosa's harmonic/percussive separation: stream 1 is the harmonic part, stream 2 the
        percussive part. A stand-in, NOT a vocal separator: sustained pitched sound (a sung
        line, but also a held organ chord) goes to stream 1, onsets and noise (drums, but also
        consonants) to stream 2. The default where the mask model's weights are absent.
  demucs:PATH  the user's own Demucs model file (`lora_jax.audio.separator.demucs_model`: the
        `demucs` package installed, the file read weights-only, nothing downloaded).
"""

import functools
from typing import Callable

import numpy as np

Separator = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def harmonic_percussive(wave: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
  """(harmonic, percussive) parts of `wave` by median filtering of its spectrogram."""
  del sample_rate  # the filter lengths are in STFT frames and bins
  import librosa  # the `audio` extra; imported here so the training side never needs it
  harmonic, percussive = librosa.effects.hpss(np.asarray(wave, np.float32))
  return harmonic.astype(np.float32), percussive.astype(np.float32)


def mask_model(wave: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
  """(vocal, accompaniment) by the shipped mask model; an error naming its file if absent."""
  from lora_jax.audio.separator import mask_model as model_lib  # imports JAX and librosa
  model = model_lib.shipped()
  if model is None:
    raise FileNotFoundError(f"separator 'mask' needs its weights at {model_lib.WEIGHTS} "
                            "(launch/train_separator.py writes them); or use 'hpss'")
  return model_lib.separate(model, wave, sample_rate)


SEPARATORS: dict[str, Separator] = {"hpss": harmonic_percussive, "mask": mask_model}
DESCRIPTIONS = {"hpss": "harmonic/percussive split (librosa.effects.hpss): stream 1 = harmonic, "
                        "stream 2 = percussive; a stand-in, not a vocal separator",
                "mask": "vocal/accompaniment mask model trained by this project on rendered "
                        "stems (assets/separator/separator.safetensors): stream 1 = vocal, "
                        "stream 2 = accompaniment"}


DEMUCS_PREFIX = "demucs:"  # 'demucs:/path/to/model.th': a Demucs model file of the user's


@functools.cache
def _demucs(path: str):
  from lora_jax.audio.separator import demucs_model
  return demucs_model.load(path)


def describe(name: str) -> str:
  """What the separator called `name` does (recorded in the codec file)."""
  if name.startswith(DEMUCS_PREFIX):
    return (f"Demucs model {name[len(DEMUCS_PREFIX):]}: stream 1 = its vocals, stream 2 = the "
            "sum of its other sources")
  get(name)
  return DESCRIPTIONS[name]


def default_name() -> str:
  """'mask' where the mask model's weights are present, else 'hpss'."""
  from lora_jax.audio.separator import mask_model as model_lib
  return "mask" if model_lib.WEIGHTS.is_file() else "hpss"


def get(name: str) -> Separator:
  """The separator called `name`, or a ValueError listing the known ones. A Demucs model file
  is loaded here (weights-only), so a missing package or a bad file fails before any work."""
  if name.startswith(DEMUCS_PREFIX):
    model = _demucs(name[len(DEMUCS_PREFIX):])
    from lora_jax.audio.separator import demucs_model
    return functools.partial(demucs_model.separate, model)
  if name not in SEPARATORS:
    raise ValueError(f"unknown separator {name!r}; known: {', '.join(SEPARATORS)}, or "
                     f"{DEMUCS_PREFIX}<a Demucs model file of yours> with the demucs package")
  return SEPARATORS[name]
