"""The oneDNN bfloat16 dense products: dispatch, values and gradients, and the sharded case.

The dispatch tests run anywhere. The kernel tests need oneDNN (scripts/setup.sh installs
libdnnl-dev on CPU hosts and builds the kernel; `onednn.build()` here is then a no-op) and a CPU
with bfloat16 instructions; elsewhere they are skipped with the reason.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from lora_jax import lora
from lora_jax.kernels import onednn
from lora_jax.models import bf16_dense
from lora_jax.models import bf16_matmul
from lora_jax.models import dense_dispatch as dispatch
import testlib

BF16_ULP = 2.0 ** -7  # bfloat16 keeps 8 significant bits: one ulp is 2^-7 of the leading power of 2
CPU = frozenset({"avx512f", "avx512_bf16"})


@pytest.mark.parametrize("call,path,why", [
    (dispatch.Call("gpu", "bfloat16", CPU, True), "xla", "native path on gpu"),
    (dispatch.Call("tpu", "bfloat16"), "xla", "native path on tpu"),
    (dispatch.Call("cpu", "float32", CPU, True), "xla", "float32 products"),
    (dispatch.Call("cpu", "bfloat16", frozenset({"avx2"}), True), "xla", "none of avx512_bf16"),
    (dispatch.Call("cpu", "bfloat16", CPU, False), "xla", "apt-get install libdnnl-dev"),
    (dispatch.Call("cpu", "bfloat16", CPU, True), "onednn_bf16", "avx512_bf16"),
    (dispatch.Call("cpu", "bfloat16", frozenset({"amx_bf16"}), True), "onednn_bf16", "amx_bf16"),
])
def test_dispatch(call, path, why):
  chosen, reason = dispatch.choose(call)
  assert chosen == path and why in reason


needs_kernel = pytest.mark.skipif(
    not onednn.headers_installed()
    or not set(dispatch.BF16_CPU_FLAGS) & dispatch.cpu_flags(),
    reason="needs oneDNN (apt-get install libdnnl-dev) and a CPU with avx512_bf16 or AMX")


@pytest.fixture(scope="module")
def kernel():
  onednn.build()
  assert onednn.load()


def _bf16(shape, seed):
  return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.bfloat16)


def _f32(x):
  return np.asarray(x, np.float32)


def _assert_rounded(out, ref):
  """`out` is float32 `ref` rounded to bfloat16 (within one rounding, plus float32 summation)."""
  np.testing.assert_allclose(_f32(out), ref, rtol=BF16_ULP / 2 + 1e-6,
                             atol=1e-5 * np.abs(ref).max())


@needs_kernel
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_product_is_the_float32_product_rounded(kernel, trans_a, trans_b):
  a, b = _bf16((24, 40), 0), _bf16((40, 16), 1)
  ref = _f32(a) @ _f32(b)
  out = jax.jit(bf16_matmul.product, static_argnums=(2, 3))(
      a.T if trans_a else a, b.T if trans_b else b, trans_a, trans_b)
  assert out.dtype == jnp.bfloat16
  _assert_rounded(out, ref)


class _Mlp(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.gelu(nn.Dense(48, dtype=jnp.bfloat16, name="in")(x))
    return nn.Dense(24, dtype=jnp.bfloat16, name="out")(h)


def _loss(params, x, onednn):
  bf16_dense.USE_ONEDNN = onednn
  try:
    y = lora.forward.apply(_Mlp(), params, [], x)  # the path every train step takes
  finally:
    bf16_dense.USE_ONEDNN = True
  return jnp.mean(y.astype(jnp.float32) ** 2)


def _setup():
  x = jax.random.normal(jax.random.PRNGKey(2), (4, 16, 32))
  params = _Mlp().init(jax.random.PRNGKey(3), x)["params"]
  return params, x


@needs_kernel
def test_dense_layers_forward_and_gradients_match_xla_bfloat16(kernel):
  """Within bfloat16 rounding of XLA's own bfloat16 path, for the loss and every gradient (the
  kernel's and the input's: dW = x^T g and dx = g W^T), and the kernel really ran."""
  params, x = _setup()
  grad = jax.jit(jax.value_and_grad(_loss, argnums=(0, 1)), static_argnums=2)
  (l_dnn, g_dnn), (l_xla, g_xla) = grad(params, x, True), grad(params, x, False)
  np.testing.assert_allclose(l_dnn, l_xla, rtol=4 * BF16_ULP)
  for a, b in zip(jax.tree.leaves(g_dnn), jax.tree.leaves(g_xla)):
    np.testing.assert_allclose(_f32(a), _f32(b), atol=4 * BF16_ULP * np.abs(_f32(b)).max())
  hlo = jax.jit(jax.grad(_loss), static_argnums=2).lower(params, x, True).as_text()
  # Two layers' forward and dW, and the second's dx: the first's dx is not asked for.
  assert hlo.count(onednn.TARGET) == 5
  assert onednn.TARGET not in jax.jit(_loss, static_argnums=2).lower(params, x, False).as_text()


def _lora_loss(adapter_params, base, scales, x, onednn):
  bf16_dense.USE_ONEDNN = onednn
  try:
    y = lora.apply(_Mlp(), base, [lora.Active(lora.Adapter(adapter_params, scales))], x)
  finally:
    bf16_dense.USE_ONEDNN = True
  return jnp.mean(y.astype(jnp.float32) ** 2)


@needs_kernel
def test_lora_factors_products_and_gradients_match_xla_bfloat16(kernel):
  """LoRA's own products in a bfloat16 layer (x A, (x A) s B and their gradients) run oneDNN and
  give XLA's bfloat16 loss and A/B gradients within bfloat16 rounding (B random, not 0)."""
  base, x = _setup()
  x = x.astype(jnp.bfloat16)  # a delta is computed in its input's dtype
  spec = lora.LoraSpec(rank=4, alpha=8.0, target_modules=("in", "out"))
  adapter = testlib.random_adapter(base, spec, 0)
  grad = jax.jit(jax.value_and_grad(_lora_loss), static_argnums=4)
  (l_dnn, g_dnn), (l_xla, g_xla) = (grad(adapter.params, base, adapter.scales, x, flag)
                                    for flag in (True, False))
  np.testing.assert_allclose(l_dnn, l_xla, rtol=4 * BF16_ULP)
  for a, b in zip(jax.tree.leaves(g_dnn), jax.tree.leaves(g_xla)):
    np.testing.assert_allclose(_f32(a), _f32(b), atol=4 * BF16_ULP * np.abs(_f32(b)).max())
  hlo = jax.jit(jax.grad(_lora_loss), static_argnums=4).lower(
      adapter.params, base, adapter.scales, x, True).as_text()
  # Per layer: the base forward and dx (3 of them: the first layer's dx is not needed), and
  # LoRA's x A, (x A) s B, g B^T, dB, dA and dx (the first layer's dx again not needed).
  assert hlo.count(onednn.TARGET) == 3 + 11


@needs_kernel
def test_frozen_kernel_gets_no_weight_gradient_product(kernel):
  params, x = _setup()
  hlo = jax.jit(jax.grad(_loss, argnums=1), static_argnums=2).lower(params, x, True).as_text()
  assert hlo.count(onednn.TARGET) == 4  # forward and dx per layer, no dW


@needs_kernel
def test_float32_layers_are_untouched(kernel):
  dense = nn.Dense(8)
  x = jnp.ones((2, 4))
  params = dense.init(jax.random.PRNGKey(0), x)["params"]
  hlo = jax.jit(lambda p: lora.forward.apply(dense, p, [], x)).lower(params).as_text()
  assert onednn.TARGET not in hlo


@needs_kernel
@pytest.mark.parametrize("x_spec,w_spec", [(P("data"), P(None, "model")),   # data x tensor
                                           (P("data"), P("data", None))])  # data x fsdp
def test_sharded_on_8_devices_matches_one_device(kernel, x_spec, w_spec):
  """Values and gradients over a (4, 2) mesh equal one device's; a data-split batch reduces the
  weight gradient's partial products across devices, never gathering the activations."""
  mesh = jax.make_mesh((4, 2), ("data", "model"))
  x, w = _bf16((8, 16, 32), 4), _bf16((32, 24), 5)
  loss = lambda x, w: jnp.sum(bf16_matmul.dense(x, w).astype(jnp.float32) ** 2)
  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  one = fn(x, w)
  xs = jax.device_put(x, NamedSharding(mesh, x_spec))
  ws = jax.device_put(w, NamedSharding(mesh, w_spec))
  many = fn(xs, ws)
  for a, b in zip(jax.tree.leaves(many), jax.tree.leaves(one)):
    np.testing.assert_allclose(_f32(a), _f32(b), rtol=BF16_ULP, atol=1e-6)
  hlo = fn.lower(xs, ws).compile().as_text()
  assert "all-reduce" in hlo  # dW's partial products over the data axis
  if w_spec == P(None, "model"):
    assert "all-gather" not in hlo
