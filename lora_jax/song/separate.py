"""The vocal/accompaniment split behind the song tokens' streams 1 and 2, offline.

SongGeneration tokenizes a song as three streams: the mix, the vocal and the accompaniment, the
last two from Demucs, whose weights are downloaded at run time and so cannot run here. A
separator is any function (mono float32 wave, sample rate) -> (vocal, accompaniment), each the
wave's length; `SEPARATORS` names them and the codec file records which one made its streams, so
tokens of one dataset never mix two splits.

The default, `hpss`, is librosa's harmonic/percussive separation: stream 1 is the harmonic part
and stream 2 the percussive part. It is a stand-in, NOT a vocal separator: sustained pitched
sound (a sung line, but also a held organ chord) goes to stream 1, onsets and noise (drums, but
also consonants) to stream 2. It keeps what the model needs from the split (two streams that
add up to the mix and differ in content); a real separator plugs in here under a new name.
"""

from typing import Callable

import numpy as np

Separator = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def harmonic_percussive(wave: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
  """(harmonic, percussive) parts of `wave` by median filtering of its spectrogram."""
  del sample_rate  # the filter lengths are in STFT frames and bins
  import librosa  # the `audio` extra; imported here so the training side never needs it
  harmonic, percussive = librosa.effects.hpss(np.asarray(wave, np.float32))
  return harmonic.astype(np.float32), percussive.astype(np.float32)


SEPARATORS: dict[str, Separator] = {"hpss": harmonic_percussive}
DESCRIPTIONS = {"hpss": "harmonic/percussive split (librosa.effects.hpss): stream 1 = harmonic, "
                        "stream 2 = percussive; a stand-in, not a vocal separator"}


def get(name: str) -> Separator:
  """The separator called `name`, or a ValueError listing the known ones."""
  if name not in SEPARATORS:
    raise ValueError(f"unknown separator {name!r}; known: {', '.join(SEPARATORS)}")
  return SEPARATORS[name]
