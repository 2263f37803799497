"""DoRA: the forward against its definition, the factorised norm, the detached-norm gradient,
weight 0, merge, and the .lora file."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax import lora, tree_paths
from lora_jax.lora import dora
import testlib

SPEC = lora.LoraSpec(rank=4, alpha=8, use_dora=True, target_modules=("attn.q_proj", "ff.in"))
Q = ("blocks_0", "attn", "q_proj")


def dora_adapter(params, spec=SPEC, seed=1):
  """A DoRA adapter with random A, B and magnitudes away from ||W||: nothing passes trivially."""
  targets = lora.resolve(spec, params)
  adapter = lora.init_adapter(targets, spec, jax.random.key(seed), base_params=params)
  flat = tree_paths.flatten(adapter.params)
  keys = jax.random.split(jax.random.key(seed + 100), len(flat))
  for k, (path, x) in zip(keys, sorted(flat.items())):
    if path[-1] == "lora_magnitude":
      flat[path] = x * (1.0 + 0.3 * jax.random.normal(k, x.shape))
    else:
      flat[path] = 0.3 * jax.random.normal(k, x.shape)
  return adapter.replace(params=tree_paths.unflatten(flat))


def test_factorised_column_norm_matches_the_formed_matrix():
  _, params = testlib.tiny_model()
  adapter = dora_adapter(params)
  a, b, s = adapter.modules()[Q]
  w = tree_paths.flatten(params)[Q + ("kernel",)]
  want = np.linalg.norm(np.asarray(w, np.float64) + float(s) * (np.asarray(a, np.float64) @ b),
                        axis=0)
  np.testing.assert_allclose(dora.column_norm(w, a, b, s), want, rtol=1e-5)


def test_fresh_dora_adapter_is_the_base():
  model, params = testlib.tiny_model()
  targets = lora.resolve(SPEC, params)
  adapter = lora.init_adapter(targets, SPEC, jax.random.key(0), base_params=params)
  m = adapter.magnitudes()[Q]
  np.testing.assert_allclose(m, np.linalg.norm(tree_paths.flatten(params)[Q + ("kernel",)], axis=0),
                             rtol=1e-6)
  x = testlib.tokens()
  np.testing.assert_allclose(lora.apply(model, params, [lora.Active(adapter)], x),
                             model.apply({"params": params}, x), atol=1e-5)
  with pytest.raises(ValueError, match="needs base_params"):
    lora.init_adapter(targets, SPEC, jax.random.key(0))


def test_forward_is_the_merged_dora_kernel_and_weight_zero_is_the_base():
  model, params = testlib.tiny_model()
  adapter = dora_adapter(params)
  x = testlib.tokens()
  got = jax.jit(lambda ad: lora.apply(model, params, [lora.Active(ad)], x))(adapter)
  flat = tree_paths.flatten(params)
  magnitudes = adapter.magnitudes()
  for keys, (a, b, s) in adapter.modules().items():  # y = x (W + sAB) m / ||W + sAB|| + bias
    w = np.asarray(flat[keys + ("kernel",)], np.float64)
    v = w + float(s) * (np.asarray(a, np.float64) @ np.asarray(b, np.float64))
    flat[keys + ("kernel",)] = v * np.asarray(magnitudes[keys], np.float64) / np.linalg.norm(
        v, axis=0)
  want = model.apply({"params": tree_paths.unflatten(flat)}, x)
  np.testing.assert_allclose(got, want, atol=2e-5)
  merged = lora.merge(params, [adapter])
  np.testing.assert_allclose(model.apply({"params": merged}, x), want, atol=2e-5)
  zero = lora.apply(model, params, [lora.Active(adapter, 0.0)], x)
  np.testing.assert_array_equal(zero, model.apply({"params": params}, x))
  # A blend weight w applies w times the DoRA change of the kernel, in the forward and the merge.
  half = lora.apply(model, params, [lora.Active(adapter, 0.5)], x)
  np.testing.assert_allclose(half, model.apply({"params": lora.merge(params, [adapter], [0.5])}, x),
                             atol=2e-5)


def test_gradient_treats_the_norm_as_a_constant():
  model, params = testlib.tiny_model()
  adapter = dora_adapter(params)
  x = testlib.tokens()

  def loss(p):
    return jnp.mean(lora.apply(model, params, [lora.Active(adapter.replace(params=p))], x) ** 2)

  def reference_loss(p):  # the merged kernel with the norm detached, as PEFT does
    flat = tree_paths.flatten(params)
    ad = adapter.replace(params=p)
    for keys, (a, b, s) in ad.modules().items():
      w = flat[keys + ("kernel",)]
      v = w + s * (a @ b)
      norm = jax.lax.stop_gradient(jnp.linalg.norm(v, axis=0))
      flat[keys + ("kernel",)] = v * ad.magnitudes()[keys] / norm
    return jnp.mean(model.apply({"params": tree_paths.unflatten(flat)}, x) ** 2)

  got, want = jax.grad(loss)(adapter.params), jax.grad(reference_loss)(adapter.params)
  for (path, g), w in zip(tree_paths.flatten(got).items(), tree_paths.flatten(want).values()):
    assert np.abs(np.asarray(w)).max() > 0, path
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-6, err_msg=str(path))


def test_dora_file_round_trip_and_refusals(tmp_path):
  _, params = testlib.tiny_model()
  adapter = dora_adapter(params)
  path = str(tmp_path / "d.lora")
  lora.save_adapter(path, lora.AdapterRecord(adapter, SPEC, "fp", "music_lm"))
  back = lora.load_adapter(path, params)
  assert back.spec.use_dora
  for (k, a), b in zip(tree_paths.flatten(back.adapter.params).items(),
                       tree_paths.flatten(adapter.params).values()):
    np.testing.assert_array_equal(a, b, err_msg=str(k))
  lora.check_adapter(params, back)
  with pytest.raises(lora.AdapterFileError, match="use_dora=False"):
    plain = lora.LoraSpec(rank=4, alpha=8, target_modules=SPEC.target_modules)
    lora.save_adapter(path, lora.AdapterRecord(adapter, plain, "fp", "music_lm"))
  with pytest.raises(ValueError, match="cannot unmerge a DoRA adapter"):
    lora.unmerge(params, [adapter])
  with pytest.raises(ValueError, match="cannot concatenate a DoRA adapter"):
    lora.concat([adapter])


def test_magnitude_shards_like_the_output_dim():
  _, params = testlib.tiny_model()
  targets = lora.resolve(SPEC, params)
  specs = jax.tree.map(lambda _: jax.sharding.PartitionSpec(), params)
  flat = tree_paths.flatten(specs)
  flat[Q + ("kernel",)] = jax.sharding.PartitionSpec("fsdp", "model")
  got = lora.partition_specs(targets, tree_paths.unflatten(flat))
  assert got["blocks_0"]["attn"]["q_proj"]["lora_magnitude"] == jax.sharding.PartitionSpec("model")
  abstract = lora.abstract_params(targets)
  assert abstract["blocks_0"]["attn"]["q_proj"]["lora_magnitude"].shape == (32,)


def test_dora_trains_in_the_loop_step_sharded_as_on_one_device():
  import dataclasses
  import pathlib
  from lora_jax import families
  from lora_jax.train import batches, precision
  from lora_jax.train import config as config_lib
  from lora_jax.train import mesh as mesh_lib
  from lora_jax.train import state as state_lib
  from lora_jax.train import step as step_lib

  path = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "music_lm.py")
  config = config_lib.load(path, "tiny", {"model.n_layers": 1, "lora.use_dora": True,
                                          "lora.dropout": 0.1,
                                          "lora.target_modules": ("q_proj", "ff.in")})
  family = families.lookup(config.family).make(config.model, "float32")
  data = family.synthetic(2 * config.data.batch_size, 7)
  it = batches.BatchIterator(data, config.data.batch_size, seed=3)
  host = [next(it)[0] for _ in range(2)]
  results = []
  for devices, shape in ((jax.devices()[:1], (1, 1, 1)), (jax.devices(), (2, 1, 4))):
    cfg = dataclasses.replace(config, mesh=config_lib.MeshConfig(*shape))
    mesh = mesh_lib.make_mesh(cfg.mesh, devices)
    setup = state_lib.setup(cfg, family, mesh)
    initial = jax.device_get(setup.state.params)
    kernel = tree_paths.flatten(jax.device_get(setup.frozen.base))[Q + ("kernel",)]
    np.testing.assert_allclose(initial["blocks_0"]["attn"]["q_proj"]["lora_magnitude"],
                               np.linalg.norm(kernel, axis=0), rtol=1e-6)
    train = step_lib.jit_train_step(setup.step_config, mesh, setup.state_shardings,
                                    setup.frozen_shardings)
    state = setup.state
    for b in host:
      state, _ = train(state, setup.frozen, jax.device_put(
          batches.micro_batches(b, 1), mesh_lib.batch_sharding(mesh, leading=1)))
    results.append((initial, jax.device_get(state.params)))
  (initial, one), (_, sharded) = results
  for (k, a), b, c in zip(tree_paths.flatten(one).items(), tree_paths.flatten(sharded).values(),
                          tree_paths.flatten(initial).values()):
    assert not np.array_equal(a, c), k  # the magnitude trains too
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=str(k))


def test_dora_training_forward_never_forms_an_in_by_out_array():
  model, params = testlib.tiny_model()
  adapter = dora_adapter(params)
  x = testlib.tokens()

  def loss(p):
    logits = lora.apply(model, params, [lora.Active(adapter.replace(params=p), 1.0, dropout=0.1)],
                        x, rng=jax.random.key(0))
    return jnp.mean(logits ** 2)

  shapes = {(t.in_dim, t.out_dim) for t in lora.resolve(SPEC, params)}
  shapes |= {(o, i) for i, o in shapes}
  seen = set()

  def walk(jpr):
    for eqn in jpr.eqns:
      seen.update(tuple(v.aval.shape) for v in eqn.outvars)
      for p in eqn.params.values():
        if hasattr(p, "jaxpr"):
          walk(p.jaxpr)

  walk(jax.make_jaxpr(jax.grad(loss))(adapter.params).jaxpr)
  assert not seen & shapes, f"an [in, out] array was formed: {seen & shapes}"
