"""Host copies of device arrays that leave no copy behind.

`np.asarray` of a jax.Array split over several devices caches the assembled host array on the
jax.Array (measured: a [8000, 8000] float32 array split over 8 devices kept 490 MB resident after
the numpy result was dropped). Reading a sharded model one tensor at a time that way ends with the
whole model on the host. `fetch` assembles the host copy from the array's addressable shards
instead, each shard fetched through a short-lived single-device array, so once the caller drops
the result nothing stays.
"""

from typing import Any

import jax
import numpy as np


def fetch(x: Any) -> np.ndarray:
  """A numpy copy of `x`; a multi-device jax.Array keeps no host copy of its own afterwards."""
  if not isinstance(x, jax.Array) or len(x.sharding.device_set) == 1:
    return np.asarray(x)
  if not x.is_fully_addressable:
    raise ValueError(f"array {x.shape} has shards on other hosts; fetch it on each host")
  out = np.empty(x.shape, x.dtype)
  for shard in x.addressable_shards:
    if shard.replica_id == 0:  # each block once, however often it is replicated
      out[shard.index] = np.asarray(shard.data)
  return out
