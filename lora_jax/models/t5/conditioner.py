"""Stable Audio's `T5Conditioner` (stable-audio-tools 0.0.19), offline: prompts to cross-attention
tokens with a user's own T5 files, nothing downloaded.

The original tokenizes with the Hugging Face tokenizer of its `t5_model_name` (truncated and padded
to `max_length`, 128 for Stable Audio Open), runs the T5 encoder (in float16 there; float32
here), projects when the encoder's width is not the conditioning width (`proj_out`, absent for
t5-base at Stable Audio Open's 768), and zeroes the padded positions. Its T5 weights are not part
of a Stable Audio checkpoint (the original keeps the model out of its state dict and downloads
it), so they come from the user's t5-base files: `model.safetensors` through
`lora_jax.interop.t5_convert`, `tokenizer.json` through `lora_jax.data.t5.tokenizer`.
"""

import flax.linen as nn

from lora_jax.models.t5.encoder import T5Config, T5Encoder


def project_and_mask(hidden_BxSxD, attention_mask_BxS, output_dim: int, project_out: bool):
  """The original conditioner's tail after its T5: `proj_out` (a Linear with bias) when the
  encoder's width is not `output_dim` or `project_out` is set, then zeros at padding.

  Call it inside a compact module: `proj_out` becomes that module's child, the original's path.
  """
  if project_out or output_dim != hidden_BxSxD.shape[-1]:
    hidden_BxSxD = nn.Dense(output_dim, name="proj_out")(hidden_BxSxD)
  return hidden_BxSxD * attention_mask_BxS[..., None].astype(hidden_BxSxD.dtype)


class T5Conditioner(nn.Module):
  """Token ids and mask to (conditioning tokens [B, S, output_dim], mask), as the original."""

  config: T5Config
  output_dim: int
  project_out: bool = False

  @nn.compact
  def __call__(self, input_ids_BxS, attention_mask_BxS):
    h = T5Encoder(self.config, name="model")(input_ids_BxS, attention_mask_BxS)
    return (project_and_mask(h, attention_mask_BxS, self.output_dim, self.project_out),
            attention_mask_BxS)
