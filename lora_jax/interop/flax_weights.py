"""The Flax-native base file: a parameter tree as safetensors under dotted Flax names.

Keys are the paths of `lora_jax.tree_paths` (`blocks.0.attn.q_proj.kernel`), arrays keep Flax
layout and the dtype they were saved in. Reading is checked against the abstract tree of the model
that will use the weights: a missing key, an unknown key or a wrong shape is a `WeightFileError`,
never a partial load. The same check serves the PyTorch converters (`torch_convert`).
"""

import os
from typing import Any, Callable, Mapping

import numpy as np
import safetensors

from lora_jax import errors, stable_safetensors, tree_paths

Shape = tuple[int, ...]


class WeightFileError(errors.UserError):
  """A weight file that does not fit the model, or cannot be read safely."""


def listed(names: list[str], describe: Callable[[str], str] = str) -> str:
  """The first name (described) and a count of the rest: 'a.weight (+2 more)'."""
  more = f" (+{len(names) - 1} more)" if len(names) > 1 else ""
  return f"{describe(names[0])}{more}"


def check_names_and_shapes(expected: Mapping[str, Shape], got: Mapping[str, Shape],
                           source: str) -> None:
  """Raise one-line `WeightFileError` unless `got` has exactly the keys and shapes of `expected`."""
  missing = [k for k in expected if k not in got]
  unknown = [k for k in got if k not in expected]
  wrong = [k for k in expected if k in got and tuple(got[k]) != tuple(expected[k])]
  problems = []
  if missing:
    problems.append(f"missing keys in {source}: {listed(missing)}")
  if unknown:
    problems.append(f"unexpected keys in {source}: {listed(unknown)}")
  if wrong:
    shape = lambda k: f"{k} is {tuple(got[k])}, expected {tuple(expected[k])}"
    problems.append(f"shape mismatch in {source}: {listed(wrong, shape)}")
  if problems:
    raise WeightFileError("; ".join(problems))


def dotted_leaves(tree: Any) -> dict[str, Any]:
  """{dotted path: leaf} of a parameter tree; an error if two Flax paths share one dotted name."""
  flat = tree_paths.flatten(tree)
  out = {tree_paths.dotted(keys): leaf for keys, leaf in flat.items()}
  if len(out) != len(flat):
    seen: dict[str, tuple[str, ...]] = {}
    for keys in flat:
      name = tree_paths.dotted(keys)
      if name in seen:
        raise WeightFileError(f"Flax paths {seen[name]} and {keys} both map to {name}")
      seen[name] = keys
  return out


def save_params(params: Any, path: str, metadata: Mapping[str, str] | None = None) -> None:
  """Write a Flax parameter tree to `path` as safetensors with dotted Flax keys, atomically."""
  metadata = dict(metadata or {})
  bad = {k: type(v).__name__ for k, v in metadata.items() if not isinstance(v, str)}
  if bad:
    raise WeightFileError(f"safetensors metadata values must be str, got {bad}")
  arrays = {name: np.ascontiguousarray(np.asarray(leaf))
            for name, leaf in dotted_leaves(params).items()}
  stable_safetensors.save_numpy(arrays, path, metadata)


def _open(path: str, framework: str):
  if not os.path.isfile(path):
    raise WeightFileError(f"no such weight file: {path}")
  try:
    return safetensors.safe_open(path, framework=framework)
  except Exception as e:  # the Rust reader raises SafetensorError for any malformed file
    raise WeightFileError(f"cannot read {path} as safetensors: {e}") from e


def read_metadata(path: str) -> dict[str, str]:
  """The string metadata stored in the header of a safetensors file."""
  with _open(path, "np") as f:
    return dict(f.metadata() or {})


def load_params(path: str, abstract_params: Any) -> dict:
  """Read a Flax-native safetensors file into a nested dict of numpy arrays shaped like the tree."""
  expected = {name: tuple(leaf.shape) for name, leaf in dotted_leaves(abstract_params).items()}
  name_to_keys = {tree_paths.dotted(keys): keys for keys in tree_paths.flatten(abstract_params)}
  with _open(path, "np") as f:
    names = list(f.keys())
    got = {name: tuple(f.get_slice(name).get_shape()) for name in names}
    check_names_and_shapes(expected, got, os.path.basename(path))
    flat = {name_to_keys[name]: f.get_tensor(name) for name in names}
  return tree_paths.unflatten(flat)


def load_params_sharded(path: str, abstract_params: Any, shardings: Any) -> Any:
  """`load_params` straight into sharded jax.Arrays: each device's block is read from the file
  alone (a slice of the tensor), so no host holds a whole array, let alone the model."""
  import jax  # pylint: disable=g-import-not-at-top; the rest of this file is numpy only
  expected = {name: tuple(leaf.shape) for name, leaf in dotted_leaves(abstract_params).items()}
  with _open(path, "np") as f:
    got = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
  check_names_and_shapes(expected, got, os.path.basename(path))
  flat_shardings = tree_paths.flatten(shardings)
  flat = {}
  for keys, leaf in tree_paths.flatten(abstract_params).items():
    # The file is opened per tensor: safetensors reads through mmap, and pages of a mapping held
    # across every tensor stay resident until it closes -- the whole file, in the end.
    with _open(path, "np") as f:
      tensor = f.get_slice(tree_paths.dotted(keys))
      flat[keys] = jax.make_array_from_callback(
          tuple(leaf.shape), flat_shardings[keys],
          lambda index, tensor=tensor: np.array(tensor[index]))
  return tree_paths.unflatten(flat)
