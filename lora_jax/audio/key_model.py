"""Key by a small transposition-equivariant classifier on chroma statistics.

The profile correlation of `key.py` scores each key against one published profile of the whole
piece's chroma. This model scores each of the 24 keys from four chroma summaries (the whole
piece, its bass register, the first and the last seconds of both, each summing to 1), every one rotated so
that the candidate tonic is bin 0. The weights are shared by the 12 tonics of a mode (one weight
vector, or one tiny MLP, per mode), so the model is transposition-equivariant by construction: it
cannot learn that a key is common, only what a tonic's surroundings look like. A softmax over the 24
scores gives the best key's probability (the confidence) and the runner-up.

It is fitted on renders of corpus pieces that are not in the evaluation set (`bench/
audio_key_model.py`), chosen by cross-validation on those only, and ships as JSON
(`key_model.json`), never a pickle. It is not the analysis's default: the candidate chosen (logistic
regression on the whole piece's chroma) scored MIREX 0.794 on the evaluation set against the
profile correlation's 0.797 (docs/audio_analysis.md), so `analysis` keeps `key.py`; the benches
print both.
"""

import dataclasses
import functools
import json
import os

import librosa
import numpy as np

from lora_jax.audio import key as key_lib

MODEL = os.path.join(os.path.dirname(__file__), "key_model.json")
BLOCKS = ("full", "bass", "start", "end", "bass_start", "bass_end")
EDGE_SECONDS = 6.0  # the opening and the close: where a piece states and confirms its tonic


@dataclasses.dataclass(frozen=True)
class Chromas:
  """Four 12-bin chroma summaries of one piece, C first, each summing to 1."""
  full: np.ndarray
  bass: np.ndarray  # C1 to B3: the bass line names the tonic more often than the tune
  start: np.ndarray
  end: np.ndarray
  bass_start: np.ndarray
  bass_end: np.ndarray  # the final's bass note, where the piece is not cut before its end

  @property
  def profile(self) -> np.ndarray:
    """The whole piece's chroma, what `key.scores` correlates."""
    return self.full


def _unit(v: np.ndarray) -> np.ndarray:
  v = np.asarray(v, np.float64)
  return v / max(float(v.sum()), 1e-12)


def chromas(samples: np.ndarray, sample_rate: int) -> Chromas:
  frames = key_lib.chroma_frames(samples, sample_rate)
  bass = librosa.feature.chroma_cqt(y=samples, sr=sample_rate, hop_length=key_lib.HOP,
                                    n_octaves=3, fmin=librosa.note_to_hz("C1"))
  edge = max(1, int(round(EDGE_SECONDS * sample_rate / key_lib.HOP)))
  return Chromas(_unit(frames.sum(axis=1)), _unit(bass.sum(axis=1)),
                 _unit(frames[:, :edge].sum(axis=1)), _unit(frames[:, -edge:].sum(axis=1)),
                 _unit(bass[:, :edge].sum(axis=1)), _unit(bass[:, -edge:].sum(axis=1)))


def rotated(c: Chromas, blocks: tuple[str, ...]) -> np.ndarray:
  """12 x (12 * len(blocks)): row t holds the blocks rotated so that tonic t is bin 0, times 12."""
  rows = [np.concatenate([np.roll(getattr(c, b), -t) for b in blocks]) for t in range(12)]
  return 12 * np.stack(rows)


@dataclasses.dataclass(frozen=True)
class Model:
  """Weights of the per-mode scorer; `hidden` 0 is logistic regression."""
  blocks: tuple[str, ...]
  hidden: int
  params: dict  # name -> array; see `logits`

  def to_json(self, note: dict) -> str:
    return json.dumps({"blocks": list(self.blocks), "hidden": self.hidden,
                       "params": {k: np.asarray(v).tolist() for k, v in self.params.items()},
                       **note}, indent=1)

  @classmethod
  def from_json(cls, text: str) -> "Model":
    d = json.loads(text)
    unknown = set(d["blocks"]) - set(BLOCKS)
    if unknown:
      raise ValueError(f"key model blocks {sorted(unknown)} are not this code's {list(BLOCKS)}")
    return cls(tuple(d["blocks"]), int(d["hidden"]),
               {k: np.asarray(v, np.float64) for k, v in d["params"].items()})


def logits(params: dict, x: np.ndarray, hidden: int, xp=np) -> np.ndarray:
  """Scores of the 24 keys (C..B major, then C..B minor) from `rotated` rows x (..., 12, D)."""
  if hidden:
    h = xp.tanh(x @ params["u"] + params["a"])  # (..., 12, H), shared by both modes
    per_mode = h @ params["v"] + params["b"]  # (..., 12, 2)
  else:
    per_mode = x @ params["w"] + params["b"]  # (..., 12, 2)
  return xp.concatenate([per_mode[..., 0], per_mode[..., 1]], axis=-1)


@functools.cache
def shipped_model() -> Model:
  with open(MODEL) as f:
    return Model.from_json(f.read())


def estimate_from(c: Chromas, model: Model | None = None) -> key_lib.Key:
  """The model's key: the most probable of 24, its probability as the confidence, the runner-up."""
  model = model or shipped_model()
  z = logits(model.params, rotated(c, model.blocks), model.hidden)
  p = np.exp(z - z.max())
  p = p / p.sum()
  order = np.argsort(p)[::-1]
  best, second = int(order[0]), int(order[1])
  return key_lib.Key(best % 12, ("major", "minor")[best // 12], round(float(p[best]), 3),
                     key_lib.key_name(second % 12, ("major", "minor")[second // 12]),
                     tuple(round(float(q), 4) for q in p))


def estimate(samples: np.ndarray, sample_rate: int) -> key_lib.Key:
  """The key of a mono signal by the shipped model."""
  return estimate_from(chromas(samples, sample_rate))
