"""The symbolic music transformer: shapes, causality, dropout, and cached decoding."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax import lora
from lora_jax.models import decode
from lora_jax.models.transformer import MusicTransformer, TransformerConfig
import testlib


class TransformerTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_logits_shape_and_causality(self):
    model, params = testlib.tiny_model()
    x = testlib.tokens(2, 10)
    fwd = self.variant(lambda t: model.apply({"params": params}, t))
    y = fwd(x)
    chex.assert_shape(y, (2, 10, testlib.TINY.vocab_size))
    y2 = fwd(x.at[:, 7].set((x[:, 7] + 1) % testlib.TINY.vocab_size))
    np.testing.assert_array_equal(y[:, :7], y2[:, :7])  # the future does not leak back
    assert np.abs(y[:, 7:] - y2[:, 7:]).max() > 1e-4

  @chex.variants(with_jit=True, without_jit=True)
  def test_dropout_only_when_not_deterministic(self):
    import dataclasses
    model, params = testlib.tiny_model(dataclasses.replace(testlib.TINY, dropout=0.3))
    x = testlib.tokens()
    fwd = self.variant(lambda k: model.apply({"params": params}, x, deterministic=False,
                                             rngs={"dropout": k}))
    assert np.abs(fwd(jax.random.key(0)) - fwd(jax.random.key(1))).max() > 1e-3
    det = self.variant(lambda: model.apply({"params": params}, x))
    np.testing.assert_array_equal(det(), det())


def test_config_errors():
  with pytest.raises(ValueError, match="d_model 30 is not divisible by n_heads 4"):
    TransformerConfig(d_model=30, n_heads=4)
  model, params = testlib.tiny_model()
  with pytest.raises(ValueError, match="sequence length 30 exceeds max_len 24"):
    model.apply({"params": params}, jnp.zeros((1, 30), jnp.int32))


def test_cached_decoding_matches_full_forward_with_adapters():
  model, params = testlib.tiny_model()
  spec = lora.LoraSpec(rank=4, target_modules=("q_proj", "v_proj", "ff.in"))
  adapter = testlib.random_adapter(params, spec, seed=3)
  prompt = testlib.tokens(2, 4)
  out = decode.sample(model, params, prompt, 10, adapters=[adapter], weights=[1.0],
                      temperature=0.0)
  np.testing.assert_array_equal(out[:, :4], prompt)
  # Greedy: each generated token is the argmax of the full (uncached) forward on its prefix.
  logits = lora.apply(model, params, [lora.Active(adapter, 1.0)], out)
  np.testing.assert_array_equal(out[:, 4:], jnp.argmax(logits[:, 3:-1], axis=-1))


def test_sampling_controls():
  model, params = testlib.tiny_model()
  prompt = testlib.tokens(4, 2)
  a = decode.sample(model, params, prompt, 8, rng=jax.random.key(1), temperature=1.0)
  b = decode.sample(model, params, prompt, 8, rng=jax.random.key(1), temperature=1.0)
  c = decode.sample(model, params, prompt, 8, rng=jax.random.key(2), temperature=1.0)
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  keep = np.isfinite(decode.filter_logits(logits, 1.0, 0, 0.7))
  np.testing.assert_array_equal(keep, [[True, True, False, False]])
  keep = np.isfinite(decode.filter_logits(logits, 1.0, 1, 1.0))
  np.testing.assert_array_equal(keep, [[True, False, False, False]])
  with pytest.raises(ValueError, match="exceeds max_len 24"):
    decode.sample(model, params, prompt, 30)


def test_float16_attention_matches_fused_kernel_and_differentiates_on_cpu():
  from lora_jax.models.attention import attention
  keys = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(key, (2, 6, 4, 8)) for key in keys)
  mask = jnp.arange(6)[None, :] <= 3
  for kwargs in ({"is_causal": True}, {"mask": mask}):
    want = jax.nn.dot_product_attention(q, k, v, **kwargs)
    got = attention(q.astype(jnp.float16), k.astype(jnp.float16), v.astype(jnp.float16), **kwargs)
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=3e-3)
  grad = jax.grad(lambda q: attention(q, q, q, is_causal=True).astype(jnp.float32).sum())(
      q.astype(jnp.float16))
  assert grad.dtype == jnp.float16 and np.isfinite(np.asarray(grad, np.float32)).all()


@pytest.mark.parametrize("t", [5, 128, 300])
@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 2e-5), (jnp.bfloat16, 6e-2),
                                        (jnp.float16, 5e-3)])
def test_blockwise_causal_attention_matches_fused_kernel_and_its_gradient(t, dtype, atol):
  """The CPU kernel (query blocks of 128 that skip masked key blocks, gradient from the saved
  log-sum-exp) against jax.nn's fused kernel in float32: outputs and all three input gradients,
  at lengths below, at and across the block size. Five batch rows of three heads make batch
  chunks of 2, 2 and 1 rows (PAIRS_PER_CHUNK = 8)."""
  from lora_jax.models.attention import causal_attention
  keys = jax.random.split(jax.random.key(t), 4)
  q, k, v, w = (jax.random.normal(key, (5, t, 3, 16)) for key in keys)
  cast = lambda *xs: [x.astype(dtype) for x in xs]
  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * w)
  fused = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)
  np.testing.assert_allclose(causal_attention(*cast(q, k, v)).astype(jnp.float32),
                             fused(q, k, v), atol=atol)
  got = jax.grad(loss(causal_attention), (0, 1, 2))(*cast(q, k, v))
  want = jax.grad(loss(fused), (0, 1, 2))(q, k, v)
  for g, ref in zip(got, want):
    assert g.dtype == dtype
    np.testing.assert_allclose(g.astype(jnp.float32), ref, atol=atol * float(jnp.abs(ref).max()))


def test_cpu_model_trains_with_the_blockwise_kernel():
  """On CPU the transformer's training forward takes the custom-gradient kernel (its jaxpr holds
  the custom_vjp call), and cached decoding (masked attention) does not."""
  from lora_jax.models import attention as attention_lib
  model, params = testlib.tiny_model()
  x = testlib.tokens()
  jaxpr = str(jax.make_jaxpr(lambda p: model.apply({"params": p}, x))(params))
  assert jax.default_backend() == "cpu" and "custom_vjp_call" in jaxpr
  q = jnp.ones((1, 1, 2, 4))
  assert "custom_vjp_call" not in str(jax.make_jaxpr(
      lambda q: attention_lib.attention(q, q, q, mask=jnp.ones((1, 1, 1, 1), bool)))(q))


def test_gelu_is_the_exact_gelu():
  from lora_jax.models.activations import gelu
  x = jnp.linspace(-8.0, 8.0, 10001)
  np.testing.assert_allclose(gelu(x), jax.nn.gelu(x, approximate=False), atol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda x: gelu(x).sum())(x),
                             jax.grad(lambda x: jax.nn.gelu(x, approximate=False).sum())(x),
                             atol=1e-6)


def test_bfloat16_stored_weights_with_float32_compute_lose_nothing_in_the_embedding_sum():
  """Weights stored in bfloat16, computed in float32: the logits are exactly those of the same
  values upcast first (the token and position embeddings are summed in float32, not bfloat16)."""
  model, params = testlib.tiny_model()
  stored = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  upcast = jax.tree.map(lambda x: x.astype(jnp.float32), stored)
  tokens = testlib.tokens()
  np.testing.assert_array_equal(model.apply({"params": stored}, tokens),
                                model.apply({"params": upcast}, tokens))
