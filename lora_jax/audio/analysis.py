"""One file in, its musical description out: `analyze(path) -> Analysis`.

This is the library surface the CLI and the studio server call. The genre guess knows only the
corpus genres it was fitted on (`genre`); the instrument family guess knows the eight families it
was fitted on (`instruments`), from single-instrument renders.
"""

import dataclasses
import time

import numpy as np

from lora_jax.audio import energy as energy_lib
from lora_jax.audio import genre as genre_lib
from lora_jax.audio import instruments as instruments_lib
from lora_jax.audio import key as key_lib
from lora_jax.audio import load as load_lib
from lora_jax.audio import tempo as tempo_lib


@dataclasses.dataclass(frozen=True)
class Analysis:
  """What the analysis found in one file."""
  path: str
  seconds: float
  source_rate: int
  source_channels: int
  tempo: tempo_lib.Tempo
  key: key_lib.Key
  energy: energy_lib.Energy
  genre: genre_lib.Genre
  instruments: instruments_lib.Instruments
  analysis_seconds: float  # wall time of the analysis, for the speed table


def analyze_samples(samples: np.ndarray, sample_rate: int) -> tuple[
    tempo_lib.Tempo, key_lib.Key, energy_lib.Energy, genre_lib.Genre, instruments_lib.Instruments]:
  """Tempo, key, energy, genre and instrument guesses of mono samples at load.SAMPLE_RATE."""
  tempo = tempo_lib.estimate(samples, sample_rate)
  profile = key_lib.chroma_profile(samples, sample_rate)
  key = key_lib.from_scores(key_lib.scores(profile))
  energy = energy_lib.measure(samples, sample_rate)
  return (tempo, key, energy, genre_lib.guess(genre_lib.features(profile, key, tempo, energy)),
          instruments_lib.guess(instruments_lib.features(samples, sample_rate)))


def analyze_loaded(path: str, audio: load_lib.Audio, started: float) -> Analysis:
  """The analysis of a file already read (`load.load`), for callers that cut or separate the same
  samples afterwards; `started` is when the reading began (`time.monotonic()`)."""
  tempo, key, energy, genre, instruments = analyze_samples(audio.samples, audio.sample_rate)
  return Analysis(path, round(audio.seconds, 3), audio.source_rate, audio.source_channels, tempo,
                  key, energy, genre, instruments, round(time.monotonic() - started, 3))


def analyze(path: str, limits: load_lib.Limits = load_lib.Limits()) -> Analysis:
  """Analyses one audio file; a file that cannot be analysed raises load.BadAudio."""
  started = time.monotonic()
  return analyze_loaded(path, load_lib.load(path, limits), started)
