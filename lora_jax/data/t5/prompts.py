"""Prompts to the frozen T5's output, from the user's own T5 folder: what the dit family's 't5'
text encoder trains and samples on.

The folder is a Hugging Face T5 snapshot as t5-base ships it: `config.json` (the sizes),
`tokenizer.json`, and the weights `model.safetensors` (or `pytorch_model.bin`, read with
weights_only=True). Nothing is downloaded. Stable Audio's T5 is frozen (its `enable_grad` false),
so its output depends on the prompt alone: each distinct prompt is encoded once, before training
or sampling, in float32 (the original runs T5 in float16), and the dit family receives the
encoder's `last_hidden_state` [max_length, d_model] with the attention mask per clip; the
conditioner's `proj_out` and the masking run inside the model, as in the original.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax import errors
from lora_jax.data.t5 import tokenizer as t5_tokenizer
from lora_jax.interop import t5_convert
from lora_jax.models.t5 import encoder as t5

# The names stable-audio-tools' T5Conditioner accepts and the widths it builds `proj_out` from.
MODEL_DIMS = {"t5-small": 512, "t5-base": 768, "t5-large": 1024, "t5-3b": 1024, "t5-11b": 1024,
              "google/t5-v1_1-xl": 2048, "google/t5-v1_1-xxl": 4096,
              "google/flan-t5-small": 512, "google/flan-t5-base": 768,
              "google/flan-t5-large": 1024, "google/flan-t5-xl": 2048,
              "google/flan-t5-xxl": 4096}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_CHUNK = 8  # prompts per encoder call: one compiled shape


def _weights(folder: str) -> str:
  for name in WEIGHT_FILES:
    if os.path.isfile(os.path.join(folder, name)):
      return os.path.join(folder, name)
  raise errors.UserError(f"T5 folder {folder} holds no weights ({' or '.join(WEIGHT_FILES)})")


class T5Prompts:
  """The user's T5 folder, loaded: `prompts(texts)` -> the dit family's prompt arrays."""

  def __init__(self, folder: str, max_length: int, model_name: str):
    if not os.path.isdir(folder):
      raise errors.UserError(f"T5 folder {folder} does not exist")
    config_path = os.path.join(folder, "config.json")
    try:
      with open(config_path) as f:
        hf_config = json.load(f)
      self.config = t5.config_from_hf(hf_config)
    except (OSError, json.JSONDecodeError, TypeError, AttributeError) as e:
      raise errors.UserError(f"T5 config {config_path}: {e}") from None
    want = MODEL_DIMS.get(model_name)
    if want is not None and self.config.d_model != want:
      raise errors.UserError(f"T5 folder {folder} holds a model of width {self.config.d_model}; "
                             f"the model config's t5_model_name {model_name!r} is {want} wide")
    self.tokenizer = t5_tokenizer.Tokenizer(os.path.join(folder, "tokenizer.json"), max_length)
    self.params = t5_convert.load(_weights(folder), self.config)
    self.max_length = max_length
    self._encode = jax.jit(lambda p, ids, mask: t5.T5Encoder(self.config).apply(
        {"params": p}, ids, mask))

  @property
  def width(self) -> int:
    return self.config.d_model

  def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
    """{'prompt': float32 [N, max_length, d_model], 'prompt_mask': float32 [N, max_length]}."""
    distinct = sorted(set(texts))
    ids, mask = self.tokenizer(distinct)
    if ids.size and ids.max() >= self.config.vocab_size:
      raise errors.UserError(f"the T5 tokenizer gives token id {ids.max()}, beyond the encoder's "
                             f"vocab_size {self.config.vocab_size}: tokenizer.json and the "
                             "weights are of different models")
    hidden = []
    for i in range(0, len(distinct), _CHUNK):
      chunk_ids, chunk_mask = ids[i:i + _CHUNK], mask[i:i + _CHUNK]
      pad = _CHUNK - len(chunk_ids)
      out = self._encode(self.params, jnp.asarray(np.pad(chunk_ids, ((0, pad), (0, 0)))),
                         jnp.asarray(np.pad(chunk_mask, ((0, pad), (0, 0))).astype(np.int32)))
      hidden.append(np.asarray(out, np.float32)[:len(chunk_ids)])
    hidden = np.concatenate(hidden)
    row = {text: i for i, text in enumerate(distinct)}
    take = np.asarray([row[t] for t in texts], np.int64)
    return {"prompt": hidden[take], "prompt_mask": mask[take].astype(np.float32)}
