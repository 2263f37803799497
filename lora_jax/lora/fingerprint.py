"""A base tree's identity: what an adapter records about the base it was trained on."""

import hashlib
from typing import Any

import numpy as np

from lora_jax import host_arrays, tree_paths


def fingerprint(params: Any) -> str:
  """sha256 (16 hex digits) over every leaf's dotted path, shape, dtype and bytes, in path order."""
  h = hashlib.sha256()
  flat = {tree_paths.dotted(k): v for k, v in tree_paths.flatten(params).items()}
  for path in sorted(flat):
    leaf = host_arrays.fetch(flat[path])  # one leaf on the host at a time, even if sharded
    h.update(f"{path}:{leaf.shape}:{leaf.dtype.name};".encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()[:16]
