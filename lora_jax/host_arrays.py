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
  """A numpy copy of `x`; a multi-device jax.Array keeps no host copy of its own afterwards.

  In a multi-process run an array is fetched from the blocks this process holds: that works when
  they cover it (replicated, or split only over this process's devices), as np.asarray would.
  """
  if not isinstance(x, jax.Array) or len(x.sharding.device_set) == 1:
    return np.asarray(x)
  blocks = {}
  for shard in x.addressable_shards:
    blocks.setdefault(_block(shard.index), shard)  # each block once, however often replicated
  needed = {_block(i) for i in x.sharding.devices_indices_map(x.shape).values()}
  if needed - blocks.keys():
    raise ValueError(f"array {x.shape} has blocks only on other hosts; fetch it on each host")
  out = np.empty(x.shape, x.dtype)
  for shard in blocks.values():
    out[shard.index] = np.asarray(shard.data)
  return out


def _block(index: tuple[slice, ...]) -> tuple:
  return tuple(s.indices(1 << 62) for s in index)  # slices are not hashable before Python 3.12
