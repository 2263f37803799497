"""SongGeneration's `model.pt` <-> the Flax song LM's parameters, strictly, both directions.

The original's checkpoint is a flat dict of tensors whose LM keys start with `audiolm.` (its
`generate.py` strips that prefix and loads the rest into `LmModel`). Under the prefix, the keys
are the Flax paths of `lora_jax.models.song.lm` by `torch_convert`'s rule, except the prompt-audio
conditioner's two bare parameters (RENAMES). Reading is `torch.load(weights_only=True)`; any key
under the prefix that the model lacks, any the model needs and the file lacks, and any shape
mismatch is an error naming them. Keys outside the prefix are an error too unless the caller says
they may be ignored (the original's loader ignores them silently).
"""

import os
from typing import Any, Mapping

import torch

from lora_jax import atomic
from lora_jax.interop import flax_weights, torch_convert
from lora_jax.interop.flax_weights import WeightFileError, listed

PREFIX = "audiolm."
RENAMES = ((r"\.(EOT_emb|layer2_EOT_emb)\.weight$", r".\1"),)


def state_dict_to_params(state_dict: Mapping[str, torch.Tensor], abstract_params: Any, *,
                         source: str = "state dict", ignore_other_keys: bool = False) -> dict:
  """The original's full state dict (with `audiolm.` keys) to a Flax parameter tree."""
  outside = [k for k in state_dict if not k.startswith(PREFIX)]
  if outside and not ignore_other_keys:
    raise WeightFileError(f"{source} holds keys outside {PREFIX!r}: {listed(outside)}; they are "
                          "not the song LM's (pass ignore_other_keys to skip them)")
  return torch_convert.state_dict_to_flax(state_dict, abstract_params, source=source,
                                          prefix=PREFIX, renames=RENAMES)


def params_to_state_dict(params: Any) -> dict[str, torch.Tensor]:
  """A Flax parameter tree to the original's keys (`audiolm.` + the LM's state dict)."""
  return {PREFIX + k: v for k, v in torch_convert.flax_to_state_dict(params, RENAMES).items()}


def load_model_pt(path: str, abstract_params: Any, *, ignore_other_keys: bool = False) -> dict:
  """Read the original's `model.pt` (weights only; pickled objects are refused) into Flax params."""
  return state_dict_to_params(torch_convert.read_torch_file(path), abstract_params,
                              source=os.path.basename(path), ignore_other_keys=ignore_other_keys)


def save_model_pt(params: Any, path: str) -> None:
  """Write Flax params as a `model.pt` the original's `generate.py` loads, atomically."""
  if os.path.splitext(path)[1] not in (".pt", ".pth"):
    raise WeightFileError(f"cannot write {path}: the original's checkpoint is a .pt file")
  state_dict = params_to_state_dict(params)
  with atomic.atomic_path(path) as tmp:
    torch.save(state_dict, tmp)


def convert(input_path: str, output_path: str, abstract_params: Any, *,
            ignore_other_keys: bool = False) -> str:
  """`model.pt` -> Flax-native safetensors (the loop's `training.base_params`), or the reverse,
  chosen by the input's suffix; checked strictly before anything is written. Returns the
  direction."""
  suffix_in = os.path.splitext(input_path)[1]
  suffix_out = os.path.splitext(output_path)[1]
  if suffix_in in (".pt", ".pth"):
    if suffix_out != ".safetensors":
      raise WeightFileError(f"{output_path}: a model.pt converts to a Flax .safetensors file")
    params = load_model_pt(input_path, abstract_params, ignore_other_keys=ignore_other_keys)
    flax_weights.save_params(params, output_path)
    return "model.pt -> flax"
  if suffix_in == ".safetensors":
    if suffix_out not in (".pt", ".pth"):
      raise WeightFileError(f"{output_path}: Flax parameters convert to the original's .pt")
    save_model_pt(flax_weights.load_params(input_path, abstract_params), output_path)
    return "flax -> model.pt"
  raise WeightFileError(f"{input_path}: expected the original's .pt or Flax .safetensors, "
                        f"got {suffix_in!r}")
