"""The blockwise CPU attention on a batch-split mesh: each device chunks its own rows."""

import contextlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from lora_jax.models import attention
from lora_jax.train import batches
from lora_jax.train import mesh as mesh_lib
from lora_jax.train.config import MeshConfig
from tests.train_step_test import build, host_batches, tiny


def _count(hlo: str, op: str) -> int:
  return len(re.findall(rf"\b{op}(?:-start)?\(", hlo))


@pytest.fixture
def blockwise(monkeypatch):
  monkeypatch.setattr(attention, "USE_COMPILED_KERNEL", False)  # float32 through the jnp kernel


@pytest.mark.parametrize("model", [1, 2])
def test_blockwise_attention_is_computed_where_its_rows_live(blockwise, model):
  mesh = mesh_lib.make_mesh(MeshConfig(data=2, fsdp=4 // model, model=model))
  b, t, h, k = 8, 256, 4, 16  # two query blocks; 8 (row, head) pairs per chunk = 2 rows
  q, kk, v, w = (jax.random.normal(key, (b, t, h, k)) for key in jax.random.split(
      jax.random.key(0), 4))
  loss = lambda q, k, v: jnp.sum(attention.attention(q, k, v, is_causal=True) * w)
  fwd_bwd = jax.value_and_grad(loss, argnums=(0, 1, 2))
  # With a 'model' axis, heads come split over it (as tensor-parallel q/k/v projections leave
  # them), and stay so.
  rows = NamedSharding(mesh, P(mesh_lib.BATCH_AXES, None, "model" if model > 1 else None))

  def compiled(split: bool):
    def step(q, k, v):
      with (attention.batch_split(mesh, mesh_lib.BATCH_AXES, b, heads_axis="model") if split
            else contextlib.nullcontext()):
        return attention.attention(q, k, v, is_causal=True), fwd_bwd(q, k, v)
    return jax.jit(step, in_shardings=(rows,) * 3).lower(q, kk, v).compile()

  # Chunks of the global batch: XLA moves rows between devices (the test fails without the split).
  assert _count(compiled(False).as_text(), "collective-permute") > 0
  per_device = compiled(True)
  hlo = per_device.as_text()
  assert _count(hlo, "collective-permute") == 0 and _count(hlo, "all-to-all") == 0
  assert _count(hlo, "all-gather") == 0  # the one collective left is the loss's all-reduce

  out, (value, grads) = per_device(*(jax.device_put(x, rows) for x in (q, kk, v)))
  assert out.sharding.spec == rows.spec
  want_out = attention.attention(q, kk, v, is_causal=True)
  want_value, want_grads = fwd_bwd(q, kk, v)
  # The same rows through the same kernel, in chunks of other sizes: equal within float32
  # rounding (XLA's products for a 1-row and a 2-row chunk may round differently).
  np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  for got, want in zip(grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_batch_the_split_does_not_cover_runs_whole(blockwise):
  mesh = mesh_lib.make_mesh(MeshConfig(data=1, fsdp=8, model=1))
  q = jax.random.normal(jax.random.key(1), (4, 16, 2, 8))  # 4 rows: not the split's 8
  with attention.batch_split(mesh, mesh_lib.BATCH_AXES, 8):
    got = attention.attention(q, q, q, is_causal=True)
  np.testing.assert_array_equal(got, attention.causal_attention(q, q, q))


def test_bfloat16_train_step_moves_no_attention_rows():
  # bfloat16 compute takes the blockwise kernel (the compiled one is float32 only).
  config = tiny(**{"model.seq_len": 256, "model.max_len": 256, "data.batch_size": 8,
                   "training.precision": "bfloat16", "lora.target_modules": ("q_proj", "v_proj")})
  built = build(config, jax.devices()[:8], mesh=(1, -1, 1))
  host = batches.micro_batches(host_batches(config, 1)[0], 1)
  sharded = jax.device_put(host, mesh_lib.batch_sharding(built.setup.mesh, leading=1))
  hlo = built.train_fn.lower(built.setup.state, built.setup.frozen, sharded).compile().as_text()
  assert _count(hlo, "collective-permute") == 0  # 12 before attention ran per device
