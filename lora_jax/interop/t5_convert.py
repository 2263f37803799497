"""Hugging Face T5 checkpoints (a user's file; nothing is downloaded) -> `lora_jax.models.t5`.

Reads `T5EncoderModel` or a whole `T5ForConditionalGeneration` (t5-base's model.safetensors):
the encoder's keys are mapped strictly by `torch_convert`'s rule, and the tied input embedding may
appear as `shared.weight`, `encoder.embed_tokens.weight` or both (then they must be equal). The
decoder half of a seq2seq file (`decoder.*`, `lm_head.weight`) is not the encoder's and is left
out, counted in the result; any other key is an error naming it.
"""

import os
from typing import Any, Mapping

import jax
import numpy as np
import torch

from lora_jax import finite
from lora_jax.interop import torch_convert
from lora_jax.interop.flax_weights import WeightFileError
from lora_jax.models.t5 import encoder as t5

# Flax cannot name a module `wi_0` under tree_paths' rule (it reads `wi.0`).
RENAMES = ((r"\.wi\.(\d)\.", r".wi_\1."),)
_TIED = ("shared.weight", "encoder.embed_tokens.weight")
_DECODER = ("decoder.", "lm_head.")


def state_dict_to_params(state_dict: Mapping[str, torch.Tensor], config: t5.T5Config, *,
                         source: str = "state dict") -> tuple[dict, int]:
  """(Flax parameters, how many decoder keys were left out), checked strictly."""
  sd = {k: v for k, v in state_dict.items() if not k.startswith(_DECODER)}
  left_out = len(state_dict) - len(sd)
  tied = [sd.pop(k) for k in _TIED if k in sd]
  if not tied:
    raise WeightFileError(f"{source}: no input embedding (shared.weight or "
                          "encoder.embed_tokens.weight)")
  if len(tied) == 2 and not torch.equal(tied[0], tied[1]):
    raise WeightFileError(f"{source}: shared.weight and encoder.embed_tokens.weight differ; "
                          "T5's encoder ties them")
  sd["shared.weight"] = tied[0]
  params = torch_convert.state_dict_to_flax(sd, t5.abstract_params(config), source=source,
                                            prefix="", renames=RENAMES)
  return params, left_out


def load(path: str, config: t5.T5Config) -> dict:
  """A T5 weight file (.safetensors, .bin/.pt with weights_only=True) to Flax parameters;
  non-finite values are refused, naming the tensor."""
  params, _ = state_dict_to_params(torch_convert.read_torch_file(path), config,
                                   source=os.path.basename(path))
  finite.check_tree(params, path)
  return params


def params_to_state_dict(params: Any) -> dict[str, torch.Tensor]:
  """Flax parameters to `T5EncoderModel`'s state dict (the tied embedding under both names)."""
  sd = torch_convert.flax_to_state_dict(jax.tree_util.tree_map(np.asarray, params), RENAMES)
  sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
  return sd

