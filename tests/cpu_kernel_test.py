"""The compiled CPU attention kernel (lora_jax/kernels): build, dispatch, values, sharding.

scripts/setup.sh builds the kernel; `kernels.build()` here is then a no-op, and on a machine where
setup did not run it compiles it (about 15 s) or fails naming what is missing.
"""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from lora_jax import kernels
from lora_jax.models import attention as attention_lib
import testlib


@pytest.fixture(scope="module", autouse=True)
def built_kernel():
  kernels.build()
  assert kernels.load()


def _reference(q, k, v):
  """Causal softmax attention spelled out in float64 numpy."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  t = q.shape[1]
  logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(np.tril(np.ones((t, t), bool)), logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bhts,bshk->bthk", probs, v)


def _inputs(shape, seed=0):
  return [jax.random.normal(key, shape) for key in jax.random.split(jax.random.key(seed), 4)]


@pytest.mark.parametrize("t", [1, 63, 64, 130, 300])
def test_kernel_matches_float64_attention_and_the_jnp_gradient(t):
  """Lengths below, at and across the kernel's 64-query block; 5 rows of 3 heads of 8."""
  q, k, v, w = _inputs((5, t, 3, 8), seed=t)
  got = attention_lib.compiled_causal_attention(q, k, v)
  np.testing.assert_allclose(got, _reference(q, k, v), atol=2e-6)
  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v) * w)
  grads = jax.grad(loss(attention_lib.compiled_causal_attention), (0, 1, 2))(q, k, v)
  want = jax.grad(loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)),
                  (0, 1, 2))(q, k, v)
  for g, ref in zip(grads, want):
    np.testing.assert_allclose(g, ref, atol=2e-5 * float(jnp.abs(ref).max()))


def test_kernel_is_deterministic_across_threads():
  """Pairs run on whichever pool thread takes them; each pair's arithmetic is fixed."""
  q, k, v, w = _inputs((4, 200, 4, 16))
  fn = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attention_lib.compiled_causal_attention(q, k, v)
                                                * w), (0, 1, 2)))
  first = fn(q, k, v)
  for _ in range(3):
    for a, b in zip(first, fn(q, k, v)):
      np.testing.assert_array_equal(a, b)


def test_attention_dispatches_float32_causal_on_cpu_to_the_kernel():
  q = jnp.ones((2, 8, 2, 4))
  calls = lambda fn, *xs: str(jax.make_jaxpr(fn)(*xs))
  assert "lora_jax_causal_attention_fwd" in calls(
      lambda q: attention_lib.attention(q, q, q, is_causal=True), q)
  # bfloat16 too (upcast around it); not float16, a mask, or non-causal attention.
  assert "lora_jax_causal_attention_fwd" in calls(
      lambda q: attention_lib.attention(q, q, q, is_causal=True), q.astype(jnp.bfloat16))
  assert "lora_jax_causal" not in calls(
      lambda q: attention_lib.attention(q, q, q, is_causal=True), q.astype(jnp.float16))
  assert "lora_jax_causal" not in calls(
      lambda q: attention_lib.attention(q, q, q, is_causal=True,
                                        mask=jnp.ones((1, 1, 8, 8), bool)), q)
  assert "lora_jax_causal" not in calls(lambda q: attention_lib.attention(q, q, q), q)
  # And the model's training forward takes it.
  model, params = testlib.tiny_model()
  assert "lora_jax_causal_attention_fwd" in calls(
      lambda p: model.apply({"params": p}, testlib.tokens()), params)


def test_bfloat16_attention_is_the_float32_kernel_rounded_once():
  """bfloat16 q, k, v through the kernel: the float64 attention of the same values, rounded to
  bfloat16 once (no bfloat16 intermediates), and gradients in bfloat16 close to the blockwise
  jnp kernel's."""
  q, k, v = (x.astype(jnp.bfloat16) for x in _inputs((2, 70, 2, 16))[:3])
  out = jax.jit(lambda q, k, v: attention_lib.attention(q, k, v, is_causal=True))(q, k, v)
  assert out.dtype == jnp.bfloat16
  ref = _reference(*(np.asarray(x, np.float32) for x in (q, k, v)))
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=2.0 ** -8, atol=1e-6)
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) ** 2)
  kernel = jax.grad(loss(lambda *a: attention_lib.attention(*a, is_causal=True)), (0, 1, 2))
  blockwise = jax.grad(loss(attention_lib.causal_attention), (0, 1, 2))
  for a, b in zip(jax.jit(kernel)(q, k, v), jax.jit(blockwise)(q, k, v)):
    b = np.asarray(b, np.float32)
    np.testing.assert_allclose(np.asarray(a, np.float32), b, atol=2.0 ** -5 * np.abs(b).max())


def test_switched_off_or_unbuilt_the_jnp_kernel_runs(monkeypatch, tmp_path):
  q = jnp.ones((2, 8, 2, 4))
  jaxpr = lambda: str(jax.make_jaxpr(lambda q: attention_lib.attention(q, q, q, is_causal=True))(q))
  monkeypatch.setattr(attention_lib, "USE_COMPILED_KERNEL", False)
  assert "lora_jax_causal" not in jaxpr() and "custom_vjp_call" in jaxpr()
  monkeypatch.setattr(attention_lib, "USE_COMPILED_KERNEL", True)
  monkeypatch.setenv("LORA_JAX_KERNEL_DIR", str(tmp_path))  # nothing built there
  kernels.load.cache_clear()
  try:
    assert not kernels.load()
    assert "lora_jax_causal" not in jaxpr()
    with pytest.raises(RuntimeError, match="python -m lora_jax.kernels"):
      attention_lib.compiled_causal_attention(q, q, q)
  finally:
    monkeypatch.undo()
    kernels.load.cache_clear()
    assert kernels.load()


@pytest.mark.parametrize("axes,spec", [(("data", "fsdp"), P(("data", "fsdp"))),
                                       (("data", "model"), P("data", None, "model"))])
def test_sharded_kernel_runs_per_shard_and_matches_one_device(axes, spec):
  """Over 8 devices, batch (and heads) sharded: the same values and gradients as one device,
  and no all-gather in the compiled program (each device runs the kernel on its own shards)."""
  q, k, v, w = _inputs((8, 96, 4, 8), seed=1)
  loss = lambda q, k, v: jnp.sum(attention_lib.compiled_causal_attention(q, k, v) * w)
  step = jax.jit(jax.value_and_grad(loss, (0, 1, 2)))
  want = step(q, k, v)
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), axes)
  sharded = [jax.device_put(x, NamedSharding(mesh, spec)) for x in (q, k, v)]
  got = step(*sharded)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert all(g.sharding.is_equivalent_to(NamedSharding(mesh, spec), 4) for g in got[1])
  hlo = step.lower(*sharded).compile().as_text()
  assert "lora_jax_causal_attention_bwd" in hlo
  assert not re.search(r"all-gather|all-to-all", hlo)


def test_build_names_what_is_missing(monkeypatch, tmp_path):
  monkeypatch.setenv("LORA_JAX_KERNEL_DIR", str(tmp_path))
  monkeypatch.setenv("EIGEN_INCLUDE_DIR", str(tmp_path / "no-eigen"))
  monkeypatch.setattr(kernels, "_EIGEN_DIRS", ())
  with pytest.raises(kernels.KernelBuildError, match="Eigen headers not found in .*no-eigen"):
    kernels.build()
  assert list(tmp_path.iterdir()) == []  # nothing half-written
  done = subprocess.run([sys.executable, "-m", "lora_jax.kernels"], capture_output=True,
                        text=True, env={**os.environ, "PATH": "/nonexistent",
                                        "LORA_JAX_KERNEL_DIR": str(tmp_path), "CXX": ""})
  assert done.returncode == 1
  assert done.stderr.strip().splitlines() == [
      "error: no C++ compiler: install g++ (apt-get install g++) or set CXX"]


def test_library_name_follows_the_source(monkeypatch, tmp_path):
  """A changed source (or toolchain, jaxlib, CPU) gets a new file, never a stale library."""
  before = kernels.library_path()
  changed = tmp_path / "causal_attention.cc"
  changed.write_text(kernels.SOURCE.read_text() + "\n// changed\n")
  monkeypatch.setattr(kernels, "SOURCE", changed)
  assert kernels.library_path() != before
