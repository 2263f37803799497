"""Host copies of sharded arrays: the values, and no host copy left on the array."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from lora_jax import host_arrays


@pytest.mark.parametrize("spec", [P("f", "m"), P("m", None), P(), P(None, "f")])
def test_fetch_assembles_every_block_once_and_caches_nothing(spec):
  mesh = jax.make_mesh((4, 2), ("f", "m"))
  values = np.arange(8 * 12, dtype=np.float32).reshape(8, 12)
  x = jax.device_put(values, NamedSharding(mesh, spec))
  np.testing.assert_array_equal(host_arrays.fetch(x), values)
  # np.asarray(x) would leave the assembled array on x (jax caches it as _npy_value).
  assert getattr(x, "_npy_value", None) is None
