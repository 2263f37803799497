"""Which attention implementation runs where (models/attention_dispatch.py), and the paths that
can run on CPU: the Pallas TPU kernel in interpret mode, key lengths against a mask."""

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
import numpy as np
import pytest

from lora_jax.models import attention as attention_lib
from lora_jax.models.attention_dispatch import Call, choose


def _call(backend, dtype="float32", q=512, kv=512, head=64, causal=True, mask="none", **kw):
  return Call(backend=backend, dtype=dtype, q_len=q, kv_len=kv, head_dim=head, causal=causal,
              mask=mask, **kw)


@pytest.mark.parametrize("call,path", [
    # CPU: the compiled kernel when built, for float32 and (upcast) bfloat16; blockwise otherwise.
    (_call("cpu", cpu_kernel_built=True), "cpu_compiled"),
    (_call("cpu"), "cpu_blockwise"),
    (_call("cpu", "bfloat16", cpu_kernel_built=True), "cpu_compiled"),
    (_call("cpu", "bfloat16"), "cpu_blockwise"),
    (_call("cpu", "float16", cpu_kernel_built=True), "cpu_blockwise"),
    (_call("cpu", "float16", causal=False, mask="boolean"), "cpu_float16"),
    (_call("cpu", q=1, causal=False, mask="lengths"), "xla"),
    (_call("cpu", mask="boolean", cpu_kernel_built=True), "xla"),
    # NVIDIA GPU: cuDNN for half precision and head sizes it takes, whatever the mask.
    (_call("gpu", "bfloat16", gpu_capability=9.0), "cudnn"),
    (_call("gpu", "float16", q=1, causal=False, mask="lengths", gpu_capability=8.0), "cudnn"),
    (_call("gpu", "bfloat16", causal=False, mask="boolean", gpu_capability=9.0), "cudnn"),
    (_call("gpu", "bfloat16", head=256, gpu_capability=9.0), "cudnn"),
    (_call("gpu", "bfloat16", q=301, kv=301, gpu_capability=9.0), "xla"),
    (_call("gpu", "bfloat16", q=301, kv=301, causal=False, mask="boolean", gpu_capability=9.0),
     "xla"),
    (_call("gpu", "bfloat16", head=256, gpu_capability=8.0), "xla"),
    (_call("gpu", "bfloat16", head=60, gpu_capability=9.0), "xla"),
    (_call("gpu", "float32", gpu_capability=9.0), "xla"),
    (_call("rocm", "bfloat16"), "xla"),
    # TPU: the Pallas flash kernel for unmasked self-attention its blocks tile.
    (_call("tpu", "bfloat16"), "pallas_tpu"),
    (_call("tpu", q=256, kv=256, head=256), "pallas_tpu"),
    (_call("tpu", q=64, kv=64), "xla"),
    (_call("tpu", q=300, kv=300), "xla"),
    (_call("tpu", head=192), "xla"),
    (_call("tpu", q=1, kv=512, causal=False, mask="lengths"), "xla"),
    (_call("tpu", causal=False, mask="boolean"), "xla"),
    (_call("metal"), "xla"),
])
def test_choose(call, path):
  got, why = choose(call)
  assert got == path, why
  assert why


def test_bad_mask_kind_and_both_masks_are_refused():
  with pytest.raises(ValueError, match="mask kind"):
    _call("cpu", mask="causal")
  q = jnp.ones((1, 4, 2, 8))
  with pytest.raises(ValueError, match="not both"):
    attention_lib.attention(q, q, q, mask=jnp.ones((4, 4), bool),
                            kv_lengths_B=jnp.array([2], jnp.int32))


def _qkv(t, b=1, h=1, k=32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  return [jax.random.normal(key, (b, t, h, k), jnp.float32) for key in keys]


@pytest.mark.parametrize("t,causal", [(256, True), (128, False)])
def test_pallas_tpu_kernel_in_interpret_mode_matches_xla_with_gradients(t, causal):
  q, k, v, w = _qkv(t)
  xla = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                                     implementation="xla")
  pallas = lambda q, k, v: attention_lib._pallas_tpu(q, k, v, causal)
  loss = lambda fn: lambda *qkv: jnp.sum(fn(*qkv) * w)
  with pltpu.force_tpu_interpret_mode():
    got = pallas(q, k, v)
    got_grads = jax.grad(loss(pallas), (0, 1, 2))(q, k, v)
  np.testing.assert_allclose(got, xla(q, k, v), atol=2e-5)
  for g, ref in zip(got_grads, jax.grad(loss(xla), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(g, ref, atol=5e-5)


def test_attention_on_tpu_takes_the_pallas_kernel(monkeypatch):
  """The dispatch wired end to end: with the backend reported as TPU, `attention` calls the
  Pallas kernel (run here in interpret mode) and gives XLA's values."""
  q, k, v, _ = _qkv(128, seed=1)
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  with pltpu.force_tpu_interpret_mode():
    jaxpr = str(jax.make_jaxpr(lambda q: attention_lib.attention(q, k, v, is_causal=True))(q))
    got = attention_lib.attention(q, k, v, is_causal=True)
  assert "pallas_call" in jaxpr
  monkeypatch.undo()
  np.testing.assert_allclose(
      got, jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla"),
      atol=2e-5)


def test_key_lengths_equal_a_prefix_mask():
  q, k, v, _ = _qkv(6, b=2, h=2)
  q = q[:, :1]
  lengths = jnp.array([3, 6], jnp.int32)
  mask = (jnp.arange(6)[None, :] < lengths[:, None])[:, None, None, :]
  np.testing.assert_array_equal(attention_lib.attention(q, k, v, kv_lengths_B=lengths),
                                attention_lib.attention(q, k, v, mask=mask))
  half = [x.astype(jnp.float16) for x in (q, k, v)]
  np.testing.assert_array_equal(attention_lib.attention(*half, kv_lengths_B=lengths),
                                attention_lib.attention(*half, mask=mask))
