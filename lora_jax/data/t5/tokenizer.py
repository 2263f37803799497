"""A user's Hugging Face `tokenizer.json` (t5-base's ships one), read with the `tokenizers`
library that transformers' fast tokenizers are built on: no sentencepiece, nothing downloaded."""

import numpy as np
import tokenizers

from lora_jax import errors


class Tokenizer:
  """A Hugging Face `tokenizer.json` used as the original calls its tokenizer:
  `truncation=True, max_length=max_length, padding="max_length"`."""

  def __init__(self, path: str, max_length: int):
    try:
      self._tokenizer = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # pylint: disable=broad-except; the Rust reader's own exception type
      raise errors.UserError(f"{path}: not a readable tokenizer.json ({e})") from None
    pad = self._tokenizer.token_to_id("<pad>")
    if pad is None:
      raise errors.UserError(f"{path}: the tokenizer has no <pad> token (T5's pads with it)")
    self._tokenizer.enable_truncation(max_length)
    self._tokenizer.enable_padding(pad_id=pad, pad_token="<pad>", length=max_length)

  def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(input ids [B, max_length] int32, attention mask [B, max_length] bool)."""
    encoded = self._tokenizer.encode_batch(list(texts))
    return (np.asarray([e.ids for e in encoded], np.int32),
            np.asarray([e.attention_mask for e in encoded], bool))
