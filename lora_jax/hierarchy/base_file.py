"""A base (or merged) model file that describes itself: Flax weights plus the model's size.

The weights are `lora_jax.interop.flax_weights`' safetensors (dotted Flax names); the metadata
adds `format`, `model_family` and `model` (the `ModelSettings` JSON), so merging, generation and
evaluation need the file alone, and `extra` (JSON: where it came from, e.g. the adapters a merged
model folds in). The tokenizer's `vocab.json` sits in the same folder: every model has its
vocabulary next to it.
"""

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

from lora_jax import atomic, lora
from lora_jax.data import midi_tokenizer
from lora_jax.hierarchy.settings import ModelSettings
from lora_jax.interop import flax_weights
from lora_jax.models import transformer
from lora_jax.models.transformer import MusicTransformer, TransformerConfig
from lora_jax.train import config as config_lib

FORMAT = "lora_jax.hierarchy.model/1"
FAMILY = "music_lm"
VOCAB = "vocab.json"


@dataclasses.dataclass(frozen=True)
class BaseModel:
  """A loaded model file: its size, weights (numpy, on the host) and identity."""

  path: str
  settings: ModelSettings
  params: Any
  fingerprint: str
  extra: dict

  def transformer_config(self, dropout: float | None = None) -> TransformerConfig:
    s = self.settings
    return TransformerConfig(vocab_size=s.vocab_size, d_model=s.d_model, n_heads=s.n_heads,
                             n_layers=s.n_layers, d_ff=s.d_ff, max_len=s.max_len,
                             dropout=s.dropout if dropout is None else dropout,
                             positions=s.positions)

  def model(self) -> MusicTransformer:
    """The Flax module for inference (dropout off)."""
    return MusicTransformer(self.transformer_config(dropout=0.0))


def host(tree: Any) -> Any:
  """A tree of (device) arrays as numpy arrays."""
  return jax.tree.map(np.asarray, jax.device_get(tree))


def abstract_params(settings: ModelSettings) -> Any:
  """Shapes and dtypes of a model of this size."""
  return transformer.abstract_params(TransformerConfig(
      vocab_size=settings.vocab_size, d_model=settings.d_model, n_heads=settings.n_heads,
      n_layers=settings.n_layers, d_ff=settings.d_ff, max_len=settings.max_len,
      positions=settings.positions))


def save_model(path: str, params: Any, settings: ModelSettings, extra: dict) -> None:
  """Write weights and size to `path` (atomically)."""
  flax_weights.save_params(params, path, {
      "format": FORMAT, "model_family": FAMILY,
      "model": json.dumps(dataclasses.asdict(settings), sort_keys=True),
      "extra": json.dumps(extra, sort_keys=True)})


def read_settings(path: str) -> tuple[ModelSettings, dict]:
  """The model size and `extra` recorded in a model file, without reading the weights."""
  metadata = flax_weights.read_metadata(path)
  if metadata.get("format") != FORMAT:
    raise flax_weights.WeightFileError(
        f"{path} is not a lora_jax hierarchy model (format {metadata.get('format')!r}, expected "
        f"{FORMAT!r}: weights with their model size); train one with launch/train_base.py")
  fields = json.loads(metadata["model"])
  # Files from before rotary positions existed used a learned table.
  given = {} if "positions" in fields else {"positions": "learned"}
  settings = config_lib.from_mapping(ModelSettings, fields, f"{path} model", **given)
  return settings, json.loads(metadata.get("extra", "{}"))


def load_model(path: str) -> BaseModel:
  """Read a model file, checked against the size it records."""
  settings, extra = read_settings(path)
  params = flax_weights.load_params(path, abstract_params(settings))
  return BaseModel(os.path.abspath(path), settings, params, lora.fingerprint(params), extra)


def load_tokenizer(model_path: str, settings: ModelSettings) -> midi_tokenizer.MidiTokenizer:
  """The tokenizer in `vocab.json` beside a model file, checked against the model's vocabulary."""
  vocab = os.path.join(os.path.dirname(os.path.abspath(model_path)), VOCAB)
  if not os.path.isfile(vocab):
    raise ValueError(f"tokenizer vocabulary not found: {vocab} (every model keeps its "
                     f"vocab.json beside it)")
  tokenizer = midi_tokenizer.MidiTokenizer.load(vocab)
  if tokenizer.vocab_size != settings.vocab_size:
    raise ValueError(f"{vocab} has {tokenizer.vocab_size} tokens but the model {model_path} "
                     f"has a vocabulary of {settings.vocab_size}")
  return tokenizer


POOLED_KINDS = ("Program",)  # scored as a class: where a note starts, not which instrument
# ...except drums: a pitched program is the file's label for a melody or chord instrument, which
# the user picks when sampling, but a drum note is another kind of event (its Pitch is a drum,
# not a note), so predicting drums where the file has a bass must cost something, and an adapter
# must be able to learn when a drum style plays drums.
UNPOOLED = ("Program_drums",)


def pooled_targets(tokenizer: midi_tokenizer.MidiTokenizer) -> tuple[int, ...]:
  """Token ids the hierarchy scores as one class (`music_lm.LmConfig.pooled_targets`): the
  pitched programs; `Program_drums` stays a class of its own."""
  return tuple(i for i, name in enumerate(tokenizer.tokens)
               if name.split("_", 1)[0] in POOLED_KINDS and name not in UNPOOLED)


def copy_vocab(model_path: str, folder: str) -> str:
  """Put the vocabulary of the model at `model_path` into `folder`; returns its new path."""
  source = os.path.join(os.path.dirname(os.path.abspath(model_path)), VOCAB)
  target = os.path.join(folder, VOCAB)
  if os.path.abspath(source) != os.path.abspath(target):
    with open(source) as f:
      atomic.write_text(target, f.read())
  return target
