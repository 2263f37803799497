"""stable-audio-tools `DiffusionTransformer` state dicts <-> `lora_jax.models.dit.model` parameters.

Most keys follow `torch_convert`'s one naming rule (the Flax model uses the PyTorch module paths).
What differs, handled here and checked strictly:
- LayerNorm scales are `gamma` in the original (Flax `scale`), and its bias-free LayerNorm keeps a
  `beta` buffer of zeros in the state dict: read only if all zeros (a non-zero beta would be a
  model this twin does not compute), written back as zeros.
- `transformer.rotary_pos_emb.inv_freq` is a persistent buffer: read only if it equals the
  frequencies the Flax model computes, written back.
- `preprocess_conv`/`postprocess_conv` are 1x1 Conv1d weights [out, in, 1]; Flax holds them as
  dense kernels [in, out].
- `timestep_features.weight` [128, 1] is the same array in both.
Every other key is mapped by name and shape or named in a `WeightFileError`.
"""

import os
from typing import Any, Mapping

import jax
import numpy as np
import safetensors.torch
import torch

from lora_jax import atomic, tree_paths
from lora_jax.interop import torch_convert
from lora_jax.interop.flax_weights import WeightFileError, listed
from lora_jax.models.dit import model as dit

RENAMES = ((r"(pre_norm|cross_attend_norm|ff_norm)\.weight$", r"\1.gamma"),)
_CONVS = ("preprocess_conv", "postprocess_conv")
_FOURIER = "timestep_features"
_INV_FREQ = "transformer.rotary_pos_emb.inv_freq"


def _norm_names(abstract_params: Any) -> list[str]:
  names = torch_convert.torch_names(_without_fourier(abstract_params), RENAMES)
  return [n[:-len(".gamma")] for n in names.values() if n.endswith(".gamma")]


def _without_fourier(params: Any) -> dict:
  return {k: v for k, v in params.items() if k != _FOURIER}


def _inv_freq(config: dit.DiTConfig) -> np.ndarray:
  r = config.rotary_dim
  return (1.0 / (10000 ** (np.arange(0, r, 2, dtype=np.float32) / r))).astype(np.float32)


def _select(state_dict: Mapping[str, Any], prefix: str | None, source: str) -> dict:
  """The keys under `prefix` (stripped), or the whole dict when it is the model alone."""
  if prefix is None:
    anchors = [k[:-len("preprocess_conv.weight")] for k in state_dict
               if k.endswith("preprocess_conv.weight")]
    if len(anchors) != 1:
      raise WeightFileError(f"{source}: cannot find one diffusion transformer (keys ending in "
                            f"preprocess_conv.weight: {listed(anchors) if anchors else 'none'}); "
                            "pass its key prefix")
    prefix = anchors[0]
    outside = [k for k in state_dict if not k.startswith(prefix)]
    if outside:
      raise WeightFileError(f"{source} holds the diffusion transformer under prefix {prefix!r} "
                            f"and also keys outside it: {listed(outside)}; pass the prefix "
                            "(Stable Audio Open's is 'model.model.') to use only the keys under it")
  inside = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  if not inside:
    raise WeightFileError(f"no key of {source} starts with prefix {prefix!r} "
                          f"(first key: {next(iter(state_dict), None)})")
  return inside


def state_dict_to_params(state_dict: Mapping[str, torch.Tensor], config: dit.DiTConfig, *,
                         prefix: str | None = None, source: str = "state dict") -> dict:
  """The original's state dict to a Flax parameter tree (numpy leaves), checked strictly."""
  sd = dict(_select(state_dict, prefix, source))
  abstract = dit.abstract_params(config)
  for norm in _norm_names(abstract):
    beta = sd.pop(f"{norm}.beta", None)
    if beta is None:
      raise WeightFileError(f"{source}: missing key {norm}.beta (the zero bias buffer of "
                            f"{norm})")
    if torch.count_nonzero(beta):
      raise WeightFileError(f"{source}: {norm}.beta is not zero; lora_jax.models.dit.model implements "
                            "the original's bias-free LayerNorm only")
  inv_freq = sd.pop(_INV_FREQ, None)
  if inv_freq is None:
    raise WeightFileError(f"{source}: missing key {_INV_FREQ} (rotary embeddings)")
  expected = _inv_freq(config)
  if tuple(inv_freq.shape) != expected.shape or not np.allclose(
      torch_convert.tensor_to_numpy(inv_freq.float()), expected, rtol=1e-6, atol=0):
    raise WeightFileError(f"{source}: {_INV_FREQ} (shape {tuple(inv_freq.shape)}) is not the "
                          f"rotary frequencies of head size {config.head_dim} (rotary size "
                          f"{config.rotary_dim}); a config mismatch?")
  fourier_key = f"{_FOURIER}.weight"
  fourier = sd.pop(fourier_key, None)
  fourier_shape = tuple(abstract[_FOURIER]["weight"].shape)
  if fourier is None or tuple(fourier.shape) != fourier_shape:
    got = "missing" if fourier is None else f"shape {tuple(fourier.shape)}"
    raise WeightFileError(f"{source}: {fourier_key} is {got}, expected shape {fourier_shape}")
  for conv in _CONVS:
    w = sd.get(f"{conv}.weight")
    if w is not None:
      if w.ndim != 3 or w.shape[-1] != 1:
        raise WeightFileError(f"{source}: {conv}.weight has shape {tuple(w.shape)}, expected a "
                              "1x1 Conv1d weight [out, in, 1]")
      sd[f"{conv}.weight"] = w[..., 0]
  params = torch_convert.state_dict_to_flax(sd, _without_fourier(abstract), source=source,
                                            prefix="", renames=RENAMES)
  params[_FOURIER] = {"weight": torch_convert.tensor_to_numpy(fourier)}
  return params


def params_to_state_dict(params: Any, config: dit.DiTConfig) -> dict[str, torch.Tensor]:
  """A Flax parameter tree to the original's state dict, buffers included (loads strictly)."""
  params = jax.tree_util.tree_map(np.asarray, dict(params))
  sd = torch_convert.flax_to_state_dict(_without_fourier(params), RENAMES)
  for conv in _CONVS:
    sd[f"{conv}.weight"] = sd[f"{conv}.weight"][..., None].contiguous()
  for norm in _norm_names(params):
    sd[f"{norm}.beta"] = torch.zeros_like(sd[f"{norm}.gamma"])
  sd[_INV_FREQ] = torch.from_numpy(_inv_freq(config))
  sd[f"{_FOURIER}.weight"] = torch_convert.numpy_to_tensor(params[_FOURIER]["weight"])
  return sd


def load(path: str, config: dit.DiTConfig, prefix: str | None = None) -> dict:
  """A `.ckpt` (its `state_dict`), `.pt`/`.pth`/`.bin` or `.safetensors` file to Flax params."""
  return state_dict_to_params(torch_convert.read_torch_file(path), config, prefix=prefix,
                              source=os.path.basename(path))


def save(params: Any, config: dit.DiTConfig, path: str) -> None:
  """Writes the original's state dict as `.safetensors` or a `torch.save`d dict, atomically."""
  suffix = os.path.splitext(path)[1]
  if suffix not in (".safetensors", ".pt", ".pth", ".ckpt"):
    raise WeightFileError(f"unknown weight file type {suffix!r} for {path}; expected "
                          ".safetensors, .pt, .pth or .ckpt")
  sd = params_to_state_dict(params, config)
  with atomic.atomic_path(path) as tmp:
    if suffix == ".safetensors":
      safetensors.torch.save_file(sd, tmp)
    else:
      torch.save({"state_dict": sd} if suffix == ".ckpt" else sd, tmp)


_NUMBER_KEYS = ("embedder.embedding.0.weights", "embedder.embedding.1.weight",
                "embedder.embedding.1.bias")


def number_conditioner_to_params(state_dict: Mapping[str, torch.Tensor], prefix: str = "", *,
                                 source: str = "state dict") -> dict:
  """One original `NumberConditioner`'s weights (keys under `prefix`, e.g.
  'conditioner.conditioners.seconds_total.') to `dit_conditioning.NumberConditioner` params."""
  inside = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  missing = [prefix + k for k in _NUMBER_KEYS if k not in inside]
  unknown = [prefix + k for k in inside if k not in _NUMBER_KEYS]
  if missing or unknown:
    problems = ([f"missing {listed(missing)}"] if missing else []) + (
        [f"unexpected {listed(unknown)}"] if unknown else [])
    raise WeightFileError(f"{source}: number conditioner under {prefix!r}: "
                          f"{'; '.join(problems)}")
  weights, weight, bias = (torch_convert.tensor_to_numpy(inside[k]) for k in _NUMBER_KEYS)
  if weights.ndim != 1 or weight.shape != (bias.shape[0], weights.shape[0] * 2 + 1):
    raise WeightFileError(f"{source}: number conditioner shapes {weights.shape}, {weight.shape}, "
                          f"{bias.shape} do not fit (Fourier weights [F], Linear [D, 2F + 1])")
  return {"embedder": {"embedding_0": {"weights": weights},
                       "embedding_1": {"kernel": np.ascontiguousarray(weight.T), "bias": bias}}}


def number_conditioner_to_state_dict(params: Any, prefix: str = "") -> dict[str, torch.Tensor]:
  """`dit_conditioning.NumberConditioner` params to the original's keys under `prefix`."""
  e = params["embedder"]
  arrays = (e["embedding_0"]["weights"], np.asarray(e["embedding_1"]["kernel"]).T,
            e["embedding_1"]["bias"])
  return {prefix + k: torch_convert.numpy_to_tensor(a) for k, a in zip(_NUMBER_KEYS, arrays)}


def expected_shapes(config: dit.DiTConfig) -> dict[str, tuple[int, ...]]:
  """{original state-dict key: shape} for a config, computed without building any weights."""
  abstract = dit.abstract_params(config)
  rest = _without_fourier(abstract)
  out = {}
  flat = {tree_paths.dotted(k): v.shape for k, v in tree_paths.flatten(rest).items()}
  for path, key in torch_convert.torch_names(rest, RENAMES).items():
    shape = tuple(flat[path])
    out[key] = tuple(reversed(shape)) if path.endswith(".kernel") else shape
  for conv in _CONVS:
    out[f"{conv}.weight"] += (1,)
  for norm in _norm_names(abstract):
    out[f"{norm}.beta"] = out[f"{norm}.gamma"]
  out[_INV_FREQ] = (config.rotary_dim // 2,)
  out[f"{_FOURIER}.weight"] = tuple(abstract[_FOURIER]["weight"].shape)
  return out
