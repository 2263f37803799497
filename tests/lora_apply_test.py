"""The factorised forward: equals the merged model, never materialises W + BA, stacks, and refuses
adapters the forward never reaches."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lora_jax import lora
import testlib

SPEC = lora.LoraSpec(rank=4, alpha=8, target_modules=("q_proj", "v_proj", "out_proj", "ff.in",
                                                       "ff.out"))


class ForwardTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_factorised_forward_equals_merged_weights(self):
    model, params = testlib.tiny_model()
    adapter = testlib.random_adapter(params, SPEC, seed=1)
    x = testlib.tokens()
    fwd = self.variant(lambda ad, w: lora.apply(model, params, [lora.Active(ad, w)], x))
    y = fwd(adapter, 0.7)
    merged = lora.merge(params, [adapter], [0.7])
    np.testing.assert_allclose(y, model.apply({"params": merged}, x), atol=2e-5)
    assert np.abs(y - model.apply({"params": params}, x)).max() > 0.1  # the adapter does something

  @chex.variants(with_jit=True, without_jit=True)
  def test_weight_zero_is_bit_exact_bypass(self):
    model, params = testlib.tiny_model()
    adapter = testlib.random_adapter(params, SPEC, seed=2)
    x = testlib.tokens()
    y0 = self.variant(lambda ad: lora.apply(model, params, [lora.Active(ad, 0.0)], x))(adapter)
    plain = self.variant(lambda: lora.apply(model, params, [], x))()
    np.testing.assert_array_equal(y0, plain)


def test_stacked_child_weight_zero_equals_parent_alone_bitwise():
  model, params = testlib.tiny_model()
  parent = testlib.random_adapter(params, SPEC, seed=3)
  child = testlib.random_adapter(params, lora.LoraSpec(rank=2, target_modules=("q_proj",)), seed=4)
  x = testlib.tokens()
  both = jax.jit(lambda w: lora.apply(
      model, params, [lora.Active(parent, 1.0), lora.Active(child, w)], x))
  alone = jax.jit(lambda: lora.apply(model, params, [lora.Active(parent, 1.0)], x))
  np.testing.assert_array_equal(both(0.0), alone())
  assert np.abs(both(1.0) - alone()).max() > 1e-3


def test_new_weight_or_scale_does_not_recompile():
  model, params = testlib.tiny_model()
  adapter = testlib.random_adapter(params, SPEC, seed=5)
  x = testlib.tokens()
  fwd = jax.jit(lambda ad, w: lora.apply(model, params, [lora.Active(ad, w)], x))
  fwd(adapter, 1.0)
  other_alpha = adapter.replace(scales=jax.tree.map(lambda s: s * 3, adapter.scales))
  fwd(other_alpha, 0.25)
  assert fwd._cache_size() == 1


def test_training_forward_never_forms_the_full_delta():
  model, params = testlib.tiny_model()
  adapter = testlib.random_adapter(params, SPEC, seed=6)
  x = testlib.tokens()

  def loss(lora_params):
    ad = adapter.replace(params=lora_params)
    logits = lora.apply(model, params, [lora.Active(ad, 1.0, dropout=0.1)], x,
                        rng=jax.random.key(0))
    return jnp.mean(logits ** 2)

  jaxpr = jax.make_jaxpr(jax.grad(loss))(adapter.params)
  kernel_shapes = {(t.in_dim, t.out_dim) for t in lora.resolve(SPEC, params)}
  kernel_shapes |= {(o, i) for i, o in kernel_shapes}
  seen = set()

  def walk(jpr):
    for eqn in jpr.eqns:
      for v in eqn.outvars:
        seen.add(tuple(v.aval.shape))
      for p in eqn.params.values():
        if hasattr(p, "jaxpr"):
          walk(p.jaxpr)

  walk(jaxpr.jaxpr)
  assert not (seen & kernel_shapes), f"a [in, out] LoRA delta was formed: {seen & kernel_shapes}"
  # Sanity: the same walk does see one when the merge is written the naive way.
  naive = jax.make_jaxpr(lambda p: lora.merge(params, [adapter.replace(params=p)]))(adapter.params)
  seen.clear()
  walk(naive.jaxpr)
  assert seen & kernel_shapes


def test_dropout_needs_rng_and_changes_training_forward():
  model, params = testlib.tiny_model()
  adapter = testlib.random_adapter(params, SPEC, seed=7)
  x = testlib.tokens()
  active = lora.Active(adapter, 1.0, dropout=0.5, module_dropout=0.3)
  eval_out = lora.apply(model, params, [active], x)
  np.testing.assert_allclose(eval_out, lora.apply(model, params, [lora.Active(adapter)], x),
                             atol=1e-6)
  a = lora.apply(model, params, [active], x, rng=jax.random.key(1))
  b = lora.apply(model, params, [active], x, rng=jax.random.key(2))
  assert np.abs(a - b).max() > 1e-4


def test_adapter_for_modules_the_forward_never_calls_is_an_error():
  model, params = testlib.tiny_model()
  adapter = testlib.random_adapter(params, SPEC, seed=8)
  extra = dict(adapter.params)
  extra["not_a_layer"] = {"lora_A": jnp.ones((4, 2)), "lora_B": jnp.ones((2, 4))}
  scales = dict(adapter.scales)
  scales["not_a_layer"] = jnp.float32(1)
  bad = lora.Adapter(extra, scales)
  with pytest.raises(lora.UnusedAdapterError, match="not_a_layer"):
    lora.apply(model, params, [lora.Active(bad)], testlib.tokens())


def test_lora_shardings_follow_the_base_kernel():
  _, params = testlib.tiny_model()
  targets = lora.resolve(SPEC, params)
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("fsdp", "model"))
  base_shardings = jax.tree.map(
      lambda x: NamedSharding(mesh, P("fsdp", "model") if x.ndim == 2 else P()), params)
  shard = lora.shardings(targets, base_shardings)
  q = shard["blocks_0"]["attn"]["q_proj"]
  assert q["lora_A"].spec == P("fsdp", None)
  assert q["lora_B"].spec == P(None, "model")
  # Initialise straight into the shardings: nothing is built on one device and moved.
  adapter_params = jax.jit(
      lambda k: lora.init_params(targets, SPEC, k), out_shardings=shard)(jax.random.key(0))
  assert adapter_params["blocks_1"]["ff"]["out"]["lora_B"].sharding.spec == P(None, "model")


@pytest.mark.parametrize("rows", [2, 3])  # 14 tokens take the halved A-gradient product, 21 not
def test_low_rank_gradient_matches_autodiff_of_the_formula(rows):
  """The delta's hand-written gradient (it keeps XLA:CPU from transposing the activations' gradient
  inside the fusion that produces it, and from its slow path for x^T dh) equals autodiff of
  ((x A) s) B for every input, the blend weight included."""
  from lora_jax.lora import forward
  keys = jax.random.split(jax.random.key(0), 5)
  x = jax.random.normal(keys[0], (rows, 7, 12))
  a = jax.random.normal(keys[1], (12, 3))
  b = jax.random.normal(keys[2], (3, 10))
  g = jax.random.normal(keys[3], (rows, 7, 10))
  s = jnp.float32(0.7)
  plain = lambda x, a, b, s: jnp.sum(((x @ a) * s) @ b * g)
  ours = lambda x, a, b, s: jnp.sum(forward._low_rank(x, a, b, s) * g)
  np.testing.assert_allclose(ours(x, a, b, s), plain(x, a, b, s), rtol=1e-6)
  for got, want in zip(jax.grad(ours, (0, 1, 2, 3))(x, a, b, s),
                       jax.grad(plain, (0, 1, 2, 3))(x, a, b, s)):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dropout", [0.0, 0.2])  # with dropout the adapter's input is not x
def test_folded_widening_layer_is_the_same_function_and_gradient(monkeypatch, dropout):
  """ff.in (32 -> 48) takes the folded product [x, (h A) s] [W; B] on CPU, given enough tokens
  (not with 24, where copying [x, .] and [W; B] would cost more than the delta): the loss and its
  gradients with respect to the adapter, the base (a symbolic zero when frozen, computed when
  asked for) and the blend weight equal the unfolded path's."""
  from lora_jax.lora import forward
  model, params = testlib.tiny_model()
  # Nonzero biases (Flax initialises them to zero), so a fold that dropped one would show.
  params = jax.tree.map(lambda p: p + 0.1 * jnp.cos(jnp.arange(p.size).reshape(p.shape)), params)
  adapter = testlib.random_adapter(params, SPEC, seed=8)
  x = testlib.tokens(batch=8, length=24)  # 192 tokens: the [192, 48] delta outweighs the copies
  calls = []
  folded = forward._folded
  monkeypatch.setattr(forward, "_folded", lambda *a: calls.append(1) or folded(*a))

  def loss(lora_params, base, weight):
    active = lora.Active(adapter.replace(params=lora_params), weight, dropout=dropout)
    logits = lora.apply(model, base, [active], x, rng=jax.random.key(1))
    return jnp.mean(jnp.tanh(logits) ** 2)

  grads = {}
  for fold in (True, False):
    monkeypatch.setattr(forward, "FOLD_WIDENING", fold)
    grads[fold] = jax.value_and_grad(loss, argnums=(0, 1, 2))(adapter.params, params,
                                                              jnp.float32(0.7))
    grads[fold, "lora only"] = jax.grad(loss)(adapter.params, params, jnp.float32(0.7))
  assert len(calls) == 2 * testlib.TINY.n_layers  # ff.in of each layer, in both folded traces
  chex.assert_trees_all_close(grads[True], grads[False], rtol=2e-5, atol=1e-6)
  chex.assert_trees_all_close(grads[True, "lora only"], grads[False, "lora only"], rtol=2e-5,
                              atol=1e-6)
  base_grad = grads[True][1][1]["blocks_0"]["ff"]["in"]["kernel"]
  assert float(jnp.abs(base_grad).max()) > 0  # the base's gradient is really computed
  monkeypatch.setattr(forward, "FOLD_WIDENING", True)
  calls.clear()
  few = testlib.tokens()
  lora.apply(model, params, [lora.Active(adapter, 1.0)], few)
  assert not calls

