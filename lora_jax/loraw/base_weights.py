"""The base a LoRAW run starts from: a stable-audio-tools checkpoint converted, or a Flax file.

`--pretrained-ckpt-path` names either this project's Flax safetensors of the dit family (what a
full fine-tuning run exports, `params.safetensors`, recorded as model_family 'dit') or the
original's checkpoint of the whole conditioned model (`.ckpt` with `state_dict`, `.safetensors`,
`.pt`), whose keys sit under `model.model.` (the DiT) and `conditioner.conditioners.` (the
number conditioners), or one level deeper under `diffusion.` in a training wrapper's checkpoint.
The autoencoder's keys (`pretransform.`) are the autoencoder's, not read here. The original's T5
weights are never in its checkpoints (it loads them from the Hugging Face hub), but its T5
conditioner's `proj_out` is, under `conditioner.conditioners.prompt.proj_out.`: read when the
model runs on T5 (the user's T5 folder given), where its presence must match the config's. Without
T5 the prompt embedding that stands in for it starts from the seed, and the run says so.
"""

import os
from typing import Any

import jax
import numpy as np
import safetensors
from absl import logging

from lora_jax import tree_paths
from lora_jax.families import dit as dit_family
from lora_jax.interop import dit_convert, flax_weights, torch_convert
from lora_jax.models.dit import conditioned

_DIT = "model.model."
_NUMBERS = "conditioner.conditioners."


def is_flax_file(path: str) -> bool:
  """Whether `path` is this project's Flax safetensors of the dit family."""
  if not path.endswith(".safetensors"):
    return False
  return flax_weights.read_metadata(path).get("model_family") == dit_family.NAME


def from_original(path: str, config: dit_family.DitConfig, seed: int) -> dict:
  """The whole conditioned model's parameters (numpy) from an original checkpoint."""
  sd = torch_convert.read_torch_file(path)
  source = os.path.basename(path)
  outer = "diffusion." if any(k.startswith("diffusion." + _DIT) for k in sd) else ""
  if not any(k.startswith(outer + _DIT) for k in sd):
    raise flax_weights.WeightFileError(
        f"{source}: no key starts with {_DIT!r} (the DiT of a conditioned model); first key "
        f"{next(iter(sd), None)}")
  model = conditioned.ConditionedDiT(config.conditioned())
  params = jax.tree.map(np.asarray, jax.jit(model.init)(
      jax.random.key(seed), *dit_family_init_args(config))["params"])
  params["model"]["model"] = dit_convert.state_dict_to_params(
      sd, config.conditioned().dit, prefix=outer + _DIT, source=source)
  conditioners = params["conditioner"]["conditioners"]
  for name in conditioned.NUMBER_IDS:
    conditioners[name] = dit_convert.number_conditioner_to_params(
        sd, f"{outer}{_NUMBERS}{name}.", source=source)
  prompt_keys = sorted(k for k in sd if k.startswith(f"{outer}{_NUMBERS}{conditioned.PROMPT_ID}."))
  if config.text_encoder == "t5":
    _t5_projection(sd, f"{outer}{_NUMBERS}{conditioned.PROMPT_ID}.", config, conditioners, source)
    logging.info("%s: DiT and conditioners converted (%s); T5 comes from the user's folder",
                 source, "with proj_out" if prompt_keys else "T5 output used as it is")
    return params
  logging.info("%s: DiT and number conditioners converted; the prompt embedding (standing in "
               "for the original's T5, whose weights no checkpoint holds) starts from seed %d%s",
               source, seed, f", {len(prompt_keys)} T5 conditioner keys left unused (no T5 "
               "folder given)" if prompt_keys else "")
  return params


def _t5_projection(sd: dict, prefix: str, config: dit_family.DitConfig, conditioners: dict,
                   source: str) -> None:
  """The T5 conditioner's `proj_out` into `conditioners`, strictly: present in the file exactly
  when the config's conditioner has one (the init made it), of the config's shape."""
  keys = sorted(k for k in sd if k.startswith(prefix))
  want = conditioned.PROMPT_ID in conditioners
  if keys != ([prefix + "proj_out.bias", prefix + "proj_out.weight"] if want else []):
    raise flax_weights.WeightFileError(
        f"{source}: T5 conditioner keys {keys or 'none'}; the model config's T5 conditioner "
        f"{'has' if want else 'has no'} proj_out (widths {config.t5_width} -> {config.cond_dim}, "
        f"project_out {config.t5_project_out})")
  if not want:
    return
  weight = torch_convert.tensor_to_numpy(sd[prefix + "proj_out.weight"])
  bias = torch_convert.tensor_to_numpy(sd[prefix + "proj_out.bias"])
  if weight.shape != (config.cond_dim, config.t5_width) or bias.shape != (config.cond_dim,):
    raise flax_weights.WeightFileError(
        f"{source}: {prefix}proj_out is {list(weight.shape)} + {list(bias.shape)}, the model "
        f"needs [{config.cond_dim}, {config.t5_width}] (cond_dim, the T5 folder's d_model)")
  conditioners[conditioned.PROMPT_ID] = {"proj_out": {"kernel": np.ascontiguousarray(weight.T),
                                                      "bias": bias}}


def dit_family_init_args(config: dit_family.DitConfig) -> tuple:
  family = dit_family.make(config, "float32")
  return family.init_args()


def write_flax(params: Any, path: str, name: str, config: dit_family.DitConfig) -> None:
  """The parameters as the Flax file `training.base_params` reads, with the text encoder they
  were made for."""
  flax_weights.save_params(params, path, {"model_family": dit_family.NAME, "name": name,
                                          **dit_family.text_encoder_metadata(config)})


def _describe(text_encoder: str, t5_width: str) -> str:
  if text_encoder == "t5":
    return f"'t5' (the frozen T5 of --t5-dir, width {t5_width or 'unknown'})"
  return f"{text_encoder!r} (the trainable byte-token embedding, no --t5-dir)"


def _recorded_text_encoder(path: str) -> tuple[str, str]:
  """(text encoder, T5 width or '') of a Flax file: its record, or for a file written before the
  record existed, what its prompt conditioner's keys say (an embedding table, or T5's proj_out)."""
  meta = flax_weights.read_metadata(path)
  if "text_encoder" in meta:
    return meta["text_encoder"], meta.get("t5_width", "")
  prompt = f"conditioner.conditioners.{conditioned.PROMPT_ID}."
  with safetensors.safe_open(path, framework="np") as f:
    keys = [k for k in f.keys() if k.startswith(prompt)]
    if any(k.startswith(prompt + "embedding.") for k in keys):
      return "embedding", ""
    kernel = prompt + "proj_out.kernel"
    return "t5", str(f.get_slice(kernel).get_shape()[0]) if kernel in keys else ""


def check_text_encoder(path: str, config: dit_family.DitConfig) -> None:
  """One line naming both when a Flax base file was made for another text encoder than the
  run's (the prompt conditioner's weights would otherwise fail to load as a bare shape error)."""
  text_encoder, width = _recorded_text_encoder(path)
  want = dit_family.text_encoder_metadata(config)
  if text_encoder != want["text_encoder"] or (
      width and text_encoder == "t5" and width != want["t5_width"]):
    raise flax_weights.WeightFileError(
        f"{path}: this base DiT was trained with text encoder {_describe(text_encoder, width)}, "
        f"this run uses {_describe(want['text_encoder'], want.get('t5_width', ''))}; run with "
        "the base's text encoder")


def kernels_only(abstract: Any) -> dict:
  """The 2-D kernels of a tree: what LoRAW's module names are derived from."""
  return tree_paths.unflatten({k: v for k, v in tree_paths.flatten(abstract).items()
                               if k[-1] == "kernel" and len(v.shape) == 2})
