"""Genre guess: multinomial logistic regression on key-invariant pitch and tempo features.

Fitted by bench/audio_genre_eval.py on the genre set (music21 corpus genres, every genre played by
the same six instruments so that timbre cannot give the genre away), on a split by a hash of the
piece id; the model ships as JSON (`genre_model.json`, a `calibrated.Model`: weights, feature
means and scales, temperature), never a pickle. Its probabilities are temperature-scaled on the
validation pieces; below `threshold` (set on validation, in the file) the guess is "unknown". It
knows only the genres it was fitted on (`classes`): a pop song is outside them and should come out
"unknown", but nothing guarantees that, which is why the confidence is in the output.
"""

import dataclasses
import functools
import os

import numpy as np

from lora_jax.audio import calibrated
from lora_jax.audio import energy as energy_lib
from lora_jax.audio import key as key_lib
from lora_jax.audio import tempo as tempo_lib

MODEL = os.path.join(os.path.dirname(__file__), "genre_model.json")
FEATURES = tuple(f"chroma_{i}" for i in range(12)) + (
    "minor", "key_confidence", "key_best_score", "log2_bpm", "tempo_confidence", "half_score",
    "double_score", "level_range_db", "chroma_entropy")


@dataclasses.dataclass(frozen=True)
class Genre:
  name: str  # a fitted genre, or "unknown"
  confidence: float  # calibrated probability of the most likely genre
  probabilities: tuple[tuple[str, float], ...]


def features(profile: np.ndarray, key: key_lib.Key, tempo: tempo_lib.Tempo,
             energy: energy_lib.Energy) -> np.ndarray:
  """The feature vector (FEATURES order): chroma rotated to the estimated tonic, and the rest."""
  chroma = np.roll(np.asarray(profile, np.float64), -key.tonic)
  chroma = chroma / (chroma.sum() + 1e-12)
  entropy = -float(np.sum(chroma * np.log(chroma + 1e-12)))
  return np.concatenate([chroma, [
      float(key.mode == "minor"), key.confidence, max(key.scores), np.log2(tempo.bpm / 100),
      tempo.confidence, tempo.half_score, tempo.double_score, energy.range_db, entropy]])


@functools.cache
def shipped_model() -> calibrated.Model:
  with open(MODEL) as f:
    return calibrated.Model.from_json(f.read(), FEATURES)


def guess(x: np.ndarray, model: calibrated.Model | None = None) -> Genre:
  """The genre of a feature vector, "unknown" below the model's threshold."""
  return Genre(*(model or shipped_model()).guess(x))
