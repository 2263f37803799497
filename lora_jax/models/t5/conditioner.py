"""Stable Audio's `T5Conditioner` (stable-audio-tools 0.0.19), offline: prompts to cross-attention
tokens with a user's own T5 files, nothing downloaded.

The original tokenizes with the Hugging Face tokenizer of its `t5_model_name` (truncated and padded
to `max_length`, 128 for Stable Audio Open), runs the T5 encoder (in float16 there; float32
here), projects when the encoder's width is not the conditioning width (`proj_out`, absent for
t5-base at Stable Audio Open's 768), and zeroes the padded positions. Its T5 weights are not part
of a Stable Audio checkpoint (the original keeps the model out of its state dict and downloads
it), so they come from the user's t5-base files: `model.safetensors` through
`lora_jax.interop.t5_convert`, `tokenizer.json` read here with the `tokenizers` library.
"""

import flax.linen as nn
import numpy as np

from lora_jax import errors
from lora_jax.models.t5.encoder import T5Config, T5Encoder


class Tokenizer:
  """A Hugging Face `tokenizer.json` used as the original calls its tokenizer:
  `truncation=True, max_length=max_length, padding="max_length"`."""

  def __init__(self, path: str, max_length: int):
    import tokenizers  # pylint: disable=g-import-not-at-top; only where prompts are tokenized
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


class T5Conditioner(nn.Module):
  """Token ids and mask to (conditioning tokens [B, S, output_dim], mask), as the original."""

  config: T5Config
  output_dim: int
  project_out: bool = False

  @nn.compact
  def __call__(self, input_ids_BxS, attention_mask_BxS):
    h = T5Encoder(self.config, name="model")(input_ids_BxS, attention_mask_BxS)
    if self.project_out or self.output_dim != self.config.d_model:
      h = nn.Dense(self.output_dim, name="proj_out")(h)
    return h * attention_mask_BxS[..., None].astype(h.dtype), attention_mask_BxS
