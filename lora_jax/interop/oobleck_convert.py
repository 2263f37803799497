"""stable-audio-tools `AudioAutoencoder` (Oobleck) state dicts <-> `lora_jax.models.oobleck`.

The Flax tree keeps the original's module paths, leaf names and layouts, so a key converts by name
alone: `tree_paths` spells Flax's `layers_3` as `layers.3`, and the nearest-upsampling option's
convolution, `upsample` here, is the anonymous `layers.1.1` of the original. Checked strictly:
every key of the file is mapped or named in a `WeightFileError`, and so is every key missing.

Weight norm comes in two spellings: `weight_g`/`weight_v` (`torch.nn.utils.weight_norm`, which
stable-audio-tools 0.0.19 uses and torch 2.13 still writes) and
`parametrizations.weight.original0`/`original1` (`torch.nn.utils.parametrizations.weight_norm`).
Both are read; `weight_g`/`weight_v` is written, which the original loads strictly.

Where the weights sit: an autoencoder alone (`encoder.*`, `decoder.*`), or a whole Stable Audio
model, whose wrapper holds the autoencoder under `pretransform.model.` (Stable Audio Open's
model.safetensors and its `.ckpt`). With no prefix given, a file holding `pretransform.model.`
keys is read under that prefix (the rest of it is the diffusion model and conditioners); any other
file must be the autoencoder alone, or its prefix is named.
"""

import os
import re
from typing import Any, Mapping

import jax
import numpy as np
import torch

from lora_jax import atomic, finite, stable_safetensors, tree_paths
from lora_jax.interop import torch_convert
from lora_jax.interop.flax_weights import WeightFileError, check_names_and_shapes, listed
from lora_jax.models.oobleck import model as oobleck
from lora_jax.models.oobleck.config import AutoencoderConfig

PRETRANSFORM_PREFIX = "pretransform.model."
RENAMES = ((r"\.upsample\.", ".1."),)
_PARAMETRIZED = re.compile(r"^(.*)\.parametrizations\.weight\.original([01])$")
_ANCHOR = re.compile(r"^(.*)encoder\.layers\.0\.(weight_v|parametrizations\.weight\.original1)$")


def _torch_key(dotted: str) -> str:
  for pattern, replacement in RENAMES:
    dotted = re.sub(pattern, replacement, dotted)
  return dotted


def _key_paths(abstract_params: Any) -> dict[str, tuple[str, ...]]:
  """{torch key: Flax key tuple} for every leaf."""
  return {_torch_key(tree_paths.dotted(keys)): keys for keys in tree_paths.flatten(abstract_params)}


def expected_shapes(config: AutoencoderConfig) -> dict[str, tuple[int, ...]]:
  """{original state-dict key: shape} for a config, computed without building any weights."""
  flat = tree_paths.flatten(oobleck.abstract_params(config))
  return {_torch_key(tree_paths.dotted(keys)): tuple(leaf.shape) for keys, leaf in flat.items()}


def _select(state_dict: Mapping[str, Any], prefix: str | None, source: str) -> dict:
  if prefix is None:
    if any(k.startswith(PRETRANSFORM_PREFIX) for k in state_dict):
      prefix = PRETRANSFORM_PREFIX
    else:
      anchors = sorted({m.group(1) for k in state_dict if (m := _ANCHOR.match(k))})
      if anchors and anchors != [""]:
        raise WeightFileError(f"{source} holds an Oobleck encoder under prefix "
                              f"{listed([repr(a) for a in anchors])}; pass the prefix to read")
      return dict(state_dict)
  inside = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  if not inside:
    raise WeightFileError(f"no key of {source} starts with prefix {prefix!r} "
                          f"(first key: {next(iter(state_dict), None)})")
  return inside


def _plain_weight_norm(state_dict: dict, source: str) -> dict:
  """The parametrizations spelling of weight norm renamed to `weight_g`/`weight_v`."""
  out = {}
  for key, value in state_dict.items():
    m = _PARAMETRIZED.match(key)
    name = f"{m.group(1)}.weight_{'gv'[int(m.group(2))]}" if m else key
    if name in out:
      raise WeightFileError(f"{source} holds {name} twice (as weight_g/weight_v and as "
                            "parametrizations.weight.original0/1)")
    out[name] = value
  return out


def state_dict_to_params(state_dict: Mapping[str, torch.Tensor], config: AutoencoderConfig, *,
                         prefix: str | None = None, source: str = "state dict") -> dict:
  """The original's state dict to a Flax parameter tree (numpy leaves), checked strictly."""
  sd = _plain_weight_norm(_select(state_dict, prefix, source), source)
  not_tensors = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
  if not_tensors:
    raise WeightFileError(f"{source} holds non-tensor entries: "
                          f"{listed(not_tensors, lambda k: f'{k} is {type(sd[k]).__name__}')}")
  expected = expected_shapes(config)
  check_names_and_shapes(expected, {k: tuple(v.shape) for k, v in sd.items()}, source)
  not_float = [k for k, v in sd.items() if not v.dtype.is_floating_point]
  if not_float:
    raise WeightFileError(f"{source}: {not_float[0]} has dtype {sd[not_float[0]].dtype}, "
                          "expected floating point")
  paths = _key_paths(oobleck.abstract_params(config))
  return tree_paths.unflatten({paths[k]: torch_convert.tensor_to_numpy(sd[k]) for k in expected})


def params_to_state_dict(params: Any, prefix: str = "") -> dict[str, torch.Tensor]:
  """A Flax parameter tree to the original's state dict (`weight_g`/`weight_v` spelling), keys
  under `prefix` ('pretransform.model.' to sit inside a whole Stable Audio model's file)."""
  return {prefix + key: torch_convert.numpy_to_tensor(np.asarray(leaf))
          for key, leaf in ((_torch_key(tree_paths.dotted(keys)), leaf)
                            for keys, leaf in tree_paths.flatten(params).items())}


def load(path: str, config: AutoencoderConfig, prefix: str | None = None) -> dict:
  """A `.ckpt` (its `state_dict`), `.pt`/`.pth`/`.bin` or `.safetensors` file to Flax params;
  a tensor holding NaN or infinity is refused, naming it."""
  params = state_dict_to_params(torch_convert.read_torch_file(path), config, prefix=prefix,
                                source=os.path.basename(path))
  finite.check_tree(params, path)
  return params


def save(params: Any, path: str, prefix: str = "") -> None:
  """Writes the original's state dict as `.safetensors`, a `.ckpt` ({'state_dict': ...}) or a
  `torch.save`d dict (`.pt`/`.pth`), atomically."""
  suffix = os.path.splitext(path)[1]
  if suffix not in (".safetensors", ".pt", ".pth", ".ckpt"):
    raise WeightFileError(f"unknown weight file type {suffix!r} for {path}; expected "
                          ".safetensors, .pt, .pth or .ckpt")
  finite.check_tree(params, "autoencoder weights to save")
  sd = params_to_state_dict(jax.tree_util.tree_map(np.asarray, params), prefix)
  if suffix == ".safetensors":
    stable_safetensors.save_torch(sd, path)
    return
  with atomic.atomic_path(path) as tmp:
    torch.save({"state_dict": sd} if suffix == ".ckpt" else sd, tmp)
