"""Base weights between PyTorch state dicts and Flax parameter trees, for any model family.

No per-family tables: the expected keys come from the Flax abstract tree (`jax.eval_shape` of
`model.init`) and one naming rule, where `<path>` is the dotted path of `lora_jax.tree_paths`:

  Flax `<path>.kernel`    <->  torch `<path>.weight`, transposed (2-D `nn.Dense` kernels only)
  Flax `<path>.scale`     <->  torch `<path>.weight`  (LayerNorm / RMSNorm)
  Flax `<path>.embedding` <->  torch `<path>.weight`  (nn.Embed / nn.Embedding)
  Flax `<path>.bias`      <->  torch `<path>.bias`

A family whose PyTorch module names differ from its Flax names passes `renames`, regex
substitutions applied in order to the torch key built by the rule. Loading is strict: missing
keys, unknown keys and shape mismatches raise `WeightFileError` naming them; pickles are only
read with `torch.load(weights_only=True)`. Arrays keep the dtype they were stored in.
"""

import collections
import os
import re
from typing import Any, Mapping, Sequence

import ml_dtypes
import numpy as np
import safetensors
import safetensors.torch
import torch

from lora_jax import atomic, finite, host_arrays, pickles, stable_safetensors, tree_paths
from lora_jax.interop import sharded_safetensors
from lora_jax.interop.flax_weights import (WeightFileError, check_names_and_shapes, dotted_leaves,
                                           listed)

Renames = Sequence[tuple[str, str]]

_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def torch_names(abstract_params: Any, renames: Renames = ()) -> dict[str, str]:
  """{Flax dotted leaf path: torch state-dict key} for every leaf of the tree."""
  out = {}
  for path, leaf in dotted_leaves(abstract_params).items():
    module, _, leaf_name = path.rpartition(".")
    if leaf_name not in _TORCH_LEAF:
      raise WeightFileError(f"{path}: no PyTorch rule for a Flax leaf named {leaf_name!r}")
    if leaf_name == "kernel" and len(leaf.shape) != 2:
      raise WeightFileError(f"{path} has shape {tuple(leaf.shape)}; the PyTorch rule covers "
                            "2-D kernels only")
    name = f"{module}.{_TORCH_LEAF[leaf_name]}" if module else _TORCH_LEAF[leaf_name]
    for pattern, replacement in renames:
      name = re.sub(pattern, replacement, name)
    out[path] = name
  clashes = [n for n, count in collections.Counter(out.values()).items() if count > 1]
  if clashes:
    raise WeightFileError(f"several Flax leaves map to torch key {clashes[0]}")
  return out


def _torch_shape(path: str, flax_shape: Sequence[int]) -> tuple[int, ...]:
  return tuple(reversed(flax_shape)) if path.endswith(".kernel") else tuple(flax_shape)


def tensor_to_numpy(t: torch.Tensor) -> np.ndarray:
  """A CPU copy of a torch tensor as numpy, bfloat16 included (as ml_dtypes.bfloat16)."""
  t = t.detach().cpu().contiguous()
  if t.dtype == torch.bfloat16:
    return t.view(torch.uint16).numpy().view(ml_dtypes.bfloat16).copy()
  return t.numpy().copy()


def numpy_to_tensor(a: Any) -> torch.Tensor:
  """A torch tensor with the values and dtype of a numpy or JAX array, bfloat16 included."""
  a = np.ascontiguousarray(np.asarray(a))
  if a.dtype == ml_dtypes.bfloat16:
    return torch.from_numpy(a.view(np.uint16).copy()).view(torch.bfloat16)
  return torch.from_numpy(a.copy())


def _strip(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
  return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def _resolve_prefix(state_dict: Mapping[str, Any], expected: set[str], prefix: str | None,
                    source: str) -> dict[str, Any]:
  """Strip `prefix` (keys outside it are dropped: the caller chose a sub-module), or detect it."""
  if prefix is not None:
    inside = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not inside:
      raise WeightFileError(f"no key of {source} starts with prefix {prefix!r} "
                            f"(first key: {next(iter(state_dict), None)})")
    return inside
  if set(state_dict) == expected:
    return dict(state_dict)
  candidates = {k[:i + 1] for k in state_dict for i, c in enumerate(k)
                if c == "." and k[i + 1:] in expected}
  fits = sorted(p for p in candidates
                if {k[len(p):] for k in state_dict if k.startswith(p)} == expected)
  if len(fits) > 1:
    raise WeightFileError(f"ambiguous key prefix in {source}: {', '.join(map(repr, fits))} all "
                          "hold the full model; pass the prefix to use")
  if len(fits) == 1:
    outside = [k for k in state_dict if not k.startswith(fits[0])]
    if outside:
      raise WeightFileError(f"{source} holds the model under prefix {fits[0]!r} and also keys "
                            f"outside it: {listed(outside)}; pass the prefix to use only the "
                            "keys under it")
    return _strip(state_dict, fits[0])
  # Nothing fits: strip the prefix that explains most keys so the error names the real gaps.
  explained = lambda p: (len(expected & set(_strip(state_dict, p))), -len(p))
  best = max(candidates | {""}, key=explained)
  return _strip(state_dict, best)


def state_dict_to_flax(state_dict: Mapping[str, torch.Tensor], abstract_params: Any, *,
                       source: str = "state dict", prefix: str | None = None,
                       renames: Renames = ()) -> dict:
  """Torch state dict to a Flax parameter tree (nested dict of numpy arrays), checked strictly."""
  names = torch_names(abstract_params, renames)
  flax_shapes = {path: tuple(leaf.shape) for path, leaf in dotted_leaves(abstract_params).items()}
  expected = {names[p]: _torch_shape(p, s) for p, s in flax_shapes.items()}
  not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
  if not_tensors:
    describe = lambda k: f"{k} is {type(state_dict[k]).__name__}"
    raise WeightFileError(f"{source} holds non-tensor entries: {listed(not_tensors, describe)}")
  state_dict = _resolve_prefix(state_dict, set(expected), prefix, source)
  check_names_and_shapes(expected, {k: tuple(v.shape) for k, v in state_dict.items()}, source)
  not_float = [k for k, v in state_dict.items() if not v.dtype.is_floating_point]
  if not_float:
    raise WeightFileError(f"{source}: {not_float[0]} has dtype {state_dict[not_float[0]].dtype}, "
                          "expected floating point")
  path_to_keys = {tree_paths.dotted(keys): keys for keys in tree_paths.flatten(abstract_params)}
  flat = {}
  for path, name in names.items():
    array = tensor_to_numpy(state_dict[name])
    flat[path_to_keys[path]] = np.ascontiguousarray(array.T) if path.endswith(".kernel") else array
  return tree_paths.unflatten(flat)


def flax_to_state_dict(params: Any, renames: Renames = ()) -> dict[str, torch.Tensor]:
  """Flax parameter tree to a torch state dict (CPU tensors, same dtypes, kernels transposed)."""
  names = torch_names(params, renames)
  out = {}
  for path, leaf in dotted_leaves(params).items():
    array = np.asarray(leaf)
    out[names[path]] = numpy_to_tensor(array.T if path.endswith(".kernel") else array)
  return out


def load_weights_only(path: str) -> Any:
  """`torch.load(weights_only=True)`: plain tensors and containers, never an arbitrary object;
  a file that needs pickle gets the project's one refusal (`lora_jax.pickles`)."""
  return pickles.torch_load(path, WeightFileError)


def read_torch_file(path: str) -> dict[str, torch.Tensor]:
  """The raw state dict in a .pt/.pth/.bin, Lightning .ckpt (its `state_dict`) or .safetensors,
  or a folder of safetensors shards with their index (or that index file)."""
  if os.path.isdir(path) or os.path.basename(path) == sharded_safetensors.INDEX:
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    return sharded_safetensors.load_torch(folder, WeightFileError)
  if not os.path.isfile(path):
    raise WeightFileError(f"no such weight file: {path}")
  suffix = os.path.splitext(path)[1]
  if suffix == ".safetensors":
    try:
      return safetensors.torch.load_file(path)
    except Exception as e:  # the Rust reader raises SafetensorError for any malformed file
      raise WeightFileError(f"cannot read {path} as safetensors: {e}") from e
  if suffix not in (".pt", ".pth", ".bin", ".ckpt"):
    raise WeightFileError(f"unknown weight file type {suffix!r} for {path}; expected .pt, .pth, "
                          ".bin, .ckpt or .safetensors")
  loaded = load_weights_only(path)
  if suffix == ".ckpt":
    if not isinstance(loaded, dict) or "state_dict" not in loaded:
      top = sorted(loaded) if isinstance(loaded, dict) else type(loaded).__name__
      raise WeightFileError(f"{path} is not a Lightning checkpoint: no 'state_dict' entry in {top}")
    loaded = loaded["state_dict"]
  if not isinstance(loaded, dict):
    raise WeightFileError(f"{path} holds a {type(loaded).__name__}, expected a state dict")
  return loaded


def load_torch_params(path: str, abstract_params: Any, *, prefix: str | None = None,
                      renames: Renames = ()) -> dict:
  """Read a PyTorch weight file into a Flax parameter tree shaped like `abstract_params`; a
  tensor holding NaN or infinity is refused, naming it."""
  params = state_dict_to_flax(read_torch_file(path), abstract_params,
                              source=os.path.basename(path), prefix=prefix, renames=renames)
  finite.check_tree(params, path)
  return params


def save_safetensors(params: Any, path: str, renames: Renames = (),
                     metadata: Mapping[str, str] | None = None) -> None:
  """Write a Flax tree as a PyTorch-named safetensors file, atomically."""
  state_dict = flax_to_state_dict(params, renames)
  stable_safetensors.save_torch(state_dict, path, metadata)


def save_sharded_safetensors(params: Any, folder: str, max_shard_bytes: int, renames: Renames = (),
                             metadata: Mapping[str, str] | None = None) -> list[str]:
  """Write a Flax tree (its leaves may be mesh-sharded jax.Arrays) as PyTorch-named safetensors
  shards of at most `max_shard_bytes` and their index, one array on the host at a time; the
  paths written, the index last."""
  names = torch_names(params, renames)
  tensors = []
  for path, leaf in dotted_leaves(params).items():
    kernel = path.endswith(".kernel")
    tensors.append(sharded_safetensors.Tensor(
        names[path], _torch_shape(path, leaf.shape), np.dtype(leaf.dtype),
        fetch=lambda leaf=leaf: host_arrays.fetch(leaf), transposed=kernel))
  return sharded_safetensors.save(tensors, folder, max_shard_bytes, metadata)


def save_state_dict(params: Any, path: str, renames: Renames = ()) -> None:
  """Write a Flax tree as a `torch.save`d plain dict of tensors, atomically."""
  state_dict = flax_to_state_dict(params, renames)
  with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
    out = _KeepsWriteError(f)
    try:
      torch.save(state_dict, out)
    except RuntimeError:
      if out.error is not None:  # a full disk, not a bug
        raise out.error from None
      raise


class _KeepsWriteError:
  """A file whose failed write is kept: torch.save turns it into a RuntimeError without the
  errno ('unexpected pos 704 vs 598'), so a full disk would read as a bug."""

  def __init__(self, f):
    self.f = f
    self.error: OSError | None = None

  def write(self, data) -> int:
    try:
      return self.f.write(data)
    except OSError as e:
      self.error = e
      raise

  def flush(self) -> None:
    self.f.flush()


SUFFIXES = (".safetensors", ".pt", ".pth")  # what `save_torch_file` writes


def save_torch_file(params: Any, path: str, renames: Renames = ()) -> None:
  """Write a Flax tree as `.safetensors` or a `.pt`/`.pth` state dict, chosen by the suffix."""
  suffix = os.path.splitext(path)[1]
  if suffix == ".safetensors":
    save_safetensors(params, path, renames)
  elif suffix in (".pt", ".pth"):
    save_state_dict(params, path, renames)
  else:
    raise WeightFileError(f"cannot export to {path}: suffix {suffix!r} is not .safetensors, .pt "
                          "or .pth")
