"""`launch/merge_song_adapter.py`: a train_song LoRA adapter folded into its base, written as one
whole model that `launch/generate_song.py --model` (and the original's `generate.py`) loads.

The merge is generate_song's own (`generate.load_params`: `lora.merge` in float32 at `weight`
times the trained scale, after the adapter's modules, shapes and base fingerprint were checked),
so the merged model samples the same codes as base + adapter. Written together, atomically: the
model (`.pt`, the original's `audiolm.` state dict, or a Flax `.safetensors`) and beside it the
adapter's `song_model.json`, its `base` naming the file merged into. Every check (the output
path, the weight, the adapter and its record, the base) runs before anything is written.
"""

import dataclasses
import os

from absl import logging

from lora_jax import atomic, errors
from lora_jax.interop import flax_weights, song_lm_weights
from lora_jax.models.song import lm as song_lm
from lora_jax.song import generate, model_record


class MergeError(errors.UserError):
  """A merge that cannot be written as asked."""


@dataclasses.dataclass(frozen=True)
class Merged:
  path: str  # the model file
  record: str  # its song_model.json


def _check_output(output: str) -> None:
  if not output.endswith((".pt", ".safetensors")):
    raise MergeError(f"--output {output} must be a .pt (the original's model.pt) or a Flax "
                     ".safetensors file")
  if os.path.isdir(output):
    raise MergeError(f"--output {output} is a folder")
  parent = os.path.dirname(os.path.abspath(output))
  while not os.path.exists(parent):  # missing folders are made when the model is written
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise MergeError(f"--output {output}: {parent} is a file, not a folder")
  beside = os.path.join(os.path.dirname(os.path.abspath(output)), model_record.NAME)
  if os.path.exists(beside) and not os.path.exists(output):
    # One record per folder: it would describe this model and leave another one without its own.
    raise MergeError(f"--output {output}: its folder already holds {model_record.NAME} of "
                     "another model; write the merge into a folder of its own")


def merge(adapter: str, output: str, base: str = "", weight: float = 1.0) -> Merged:
  """Fold `adapter` (over `base`, default the one it records) into one model at `output`."""
  errors.check_finite(weight, "--weight")
  _check_output(output)
  source = generate.adapter_source(adapter, base)
  record = source.record
  params = generate.load_params(source.weights, source.adapter, record, weight,
                                song_lm.abstract_params(record.model.lm_config("float32")))
  merged_record = dataclasses.replace(record, base=os.path.abspath(source.weights))
  beside = os.path.join(os.path.dirname(os.path.abspath(output)), model_record.NAME)
  with atomic.atomic_paths(output, beside) as (model_tmp, record_tmp):
    if output.endswith(".pt"):
      song_lm_weights.save_model_pt(params, model_tmp)
    else:
      flax_weights.save_params(params, model_tmp)
    model_record.write(os.path.dirname(record_tmp), merged_record)
  logging.info("merged %s (weight %g) into %s -> %s", adapter, weight, source.weights, output)
  return Merged(output, beside)
