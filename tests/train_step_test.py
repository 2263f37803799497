"""The train step: sharding invariance, what trains and what stays frozen, accumulation, precision,
non-finite steps and the child-adapter case."""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lora_jax import families, lora, tree_paths
from lora_jax.interop import flax_weights
from lora_jax.train import batches, precision
from lora_jax.train import config as config_lib
from lora_jax.train import mesh as mesh_lib
from lora_jax.train import state as state_lib
from lora_jax.train import step as step_lib

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "music_lm.py")


def tiny(**overrides) -> config_lib.TrainConfig:
  return config_lib.load(CONFIG, "tiny", {"model.n_layers": 1, **overrides})


@dataclasses.dataclass
class Built:
  config: config_lib.TrainConfig
  setup: state_lib.Setup
  train_fn: object
  eval_fn: object


def build(config, devices, mesh=(-1, 1, 1)) -> Built:
  config = dataclasses.replace(config, mesh=config_lib.MeshConfig(*mesh))
  pol = precision.policy(config.training.precision, config.training.base_dtype)
  family = families.lookup(config.family).make(config.model, pol.compute_dtype)
  m = mesh_lib.make_mesh(config.mesh, devices)
  setup = state_lib.setup(config, family, m)
  return Built(config, setup,
               step_lib.jit_train_step(setup.step_config, m, setup.state_shardings,
                                       setup.frozen_shardings),
               step_lib.jit_eval_step(setup.step_config, m, setup.state_shardings.params,
                                      setup.frozen_shardings))


def host_batches(config, n: int, full_mask: bool = False) -> list[dict]:
  family = families.lookup(config.family).make(config.model, "float32")
  data = family.synthetic(n * config.data.batch_size, 7)
  if full_mask:
    data["mask"] = np.ones_like(data["mask"])
  it = batches.BatchIterator(data, config.data.batch_size, seed=3)
  return [next(it)[0] for _ in range(n)]


def run(built: Built, host: list[dict], state=None):
  """Steps over host batches from `state` (default: the initial one, which gets donated)."""
  mesh = built.setup.mesh
  accum = built.config.opt.grad_accum_steps
  state, out = built.setup.state if state is None else state, []
  for b in host:
    state, m = built.train_fn(state, built.setup.frozen, jax.device_put(
        batches.micro_batches(b, accum), mesh_lib.batch_sharding(mesh, leading=1)))
    out.append(jax.device_get(m))
  return state, out


def flat(tree) -> dict:
  return {tree_paths.dotted(k): np.asarray(v) for k, v in tree_paths.flatten(tree).items()}


@pytest.fixture(scope="module")
def plain():
  """The tiny LoRA config on one device, and a host copy of its initial state to start from."""
  built = build(tiny(), jax.devices()[:1])
  return built, jax.device_get(built.setup.state)


def fresh(built: Built, host_state):
  return jax.device_put(host_state, built.setup.state_shardings)


@pytest.fixture(scope="module")
def sharded_runs():
  # Adapter dropout and module dropout on: the random streams must not depend on the mesh.
  # (Two adapted modules keep the compile short; ff.in is split over fsdp and model.)
  config = tiny(**{"lora.dropout": 0.1, "lora.module_dropout": 0.2,
                   "lora.target_modules": ("q_proj", "ff.in")})
  host = host_batches(config, 3)
  devices = jax.devices()
  assert len(devices) == 8
  out = {}
  for name, devs, mesh in (("single", devices[:1], (1, 1, 1)), ("data4_fsdp2", devices, (4, 2, 1)),
                           ("data2_model4", devices, (2, 1, 4))):
    built = build(config, devs, mesh)
    initial = (flat(built.setup.frozen.base), flat(built.setup.state.params))
    state, metrics = run(built, host)
    out[name] = (built, state, metrics, initial)
  return out


@pytest.mark.parametrize("name", ["data4_fsdp2", "data2_model4"])
def test_sharded_step_matches_single_device(sharded_runs, name):
  _, ref_state, ref_metrics, _ = sharded_runs["single"]
  built, state, metrics, (_, initial) = sharded_runs[name]
  # The params really are sharded as the rules say (not silently replicated).
  specs = {s.spec for s in jax.tree.leaves(built.setup.state_shardings.params)}
  assert any(spec != jax.sharding.PartitionSpec() for spec in specs)
  for ref, got in zip(ref_metrics, metrics):
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=2e-5)
  ref_params, params = flat(ref_state.params), flat(state.params)
  assert ref_params.keys() == params.keys()
  for k in ref_params:
    assert not np.array_equal(params[k], initial[k]), k
    np.testing.assert_allclose(params[k], ref_params[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_base_is_bit_identical_after_steps(sharded_runs):
  for built, _, _, (base_before, _) in sharded_runs.values():
    after = flat(built.setup.frozen.base)
    assert after.keys() == base_before.keys()
    for k in after:
      assert np.array_equal(after[k], base_before[k]), k


def test_optimizer_state_holds_only_trainable_leaves(sharded_runs):
  built, state, _, _ = sharded_runs["data4_fsdp2"]
  trainable = flat(state.params)
  moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
  # Adam's mu and nu, one of each per LoRA factor, and nothing base-sized.
  assert len(moments) == 2 * len(trainable)
  assert sorted(x.shape for x in moments) == sorted(2 * [v.shape for v in trainable.values()])
  assert sum(x.size for x in moments) == 2 * sum(v.size for v in trainable.values())
  base_size = sum(x.size for x in jax.tree.leaves(built.setup.frozen.base))
  assert sum(x.size for x in moments) < base_size / 2
  assert all(k.endswith(("lora_A", "lora_B")) for k in trainable)


def test_full_fine_tuning_trains_every_parameter():
  built = build(tiny(**{"training.type": "full"}), jax.devices()[:1])
  assert built.setup.frozen.base is None
  before = flat(built.setup.state.params)
  state, metrics = run(built, host_batches(built.config, 2))
  after = flat(state.params)
  assert before.keys() == after.keys() and "blocks.0.attn.q_proj.kernel" in after
  changed = [k for k in after if not np.array_equal(before[k], after[k])]
  assert len(changed) == len(after)
  moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
  assert sum(x.size for x in moments) == 2 * sum(v.size for v in after.values())
  assert np.isfinite(metrics[-1]["loss"])


def test_gradient_accumulation_counts_optimizer_steps(plain):
  built, initial = plain
  host = host_batches(built.config, 3, full_mask=True)
  # The same step, fed [1, 16] and then [4, 4] batches: accumulation is the batch's leading axis.
  s1, m1 = run(built, host, fresh(built, initial))
  four = dataclasses.replace(built, config=dataclasses.replace(
      built.config, opt=dataclasses.replace(built.config.opt, grad_accum_steps=4)))
  s4, m4 = run(four, host, fresh(built, initial))
  sched = built.setup.step_config.schedule
  # The schedule advanced once per optimiser step (3), not once per micro-batch (12).
  np.testing.assert_allclose([m["lr"] for m in m4], [sched(i) for i in range(3)], rtol=1e-6)
  counts = [int(v) for _, v in optax.tree_utils.tree_get_all_with_path(s4.opt_state, "count")]
  assert counts and all(c == 3 for c in counts)
  assert m4[0]["lr"] == 0.0 and m4[1]["lr"] > 0.0
  # With equal-sized masks the mean of 4 micro-batch gradients is the full-batch gradient.
  for ref, got in zip(m1, m4):
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-5)
  p1, p4 = flat(s1.params), flat(s4.params)
  for k in p1:
    np.testing.assert_allclose(p4[k], p1[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_float16_policy():
  pol = precision.policy("float16", "float32")
  assert pol.dynamic_loss_scale and pol.compute_dtype == "float16" and pol.param_dtype == "float32"
  scale = precision.LossScale.create(True)
  assert float(scale.scale) == precision.INITIAL_SCALE
  grads = {"w": jnp.full((2,), 4.0 * precision.INITIAL_SCALE)}
  np.testing.assert_array_equal(scale.unscale(grads)["w"], [4.0, 4.0])
  grown = precision.LossScale(scale.scale, jnp.int32(precision.GROWTH_INTERVAL - 1))
  assert float(grown.adjust(jnp.bool_(True), True).scale) == 2 * precision.INITIAL_SCALE
  assert int(grown.adjust(jnp.bool_(True), True).good_steps) == 0
  floor = precision.LossScale(jnp.float32(1.0), jnp.int32(0)).adjust(jnp.bool_(False), True)
  assert float(floor.scale) == precision.MIN_SCALE
  assert float(scale.adjust(jnp.bool_(False), False).scale) == precision.INITIAL_SCALE


def test_non_finite_step_is_skipped_and_the_loss_scale_backs_off(plain):
  # float16 compute needs an accelerator (XLA:CPU has no f16 attention dot); the dynamic loss
  # scale it brings is exercised here inside the real step, over float32 compute.
  built, initial = plain
  step_config = dataclasses.replace(built.setup.step_config, dynamic_loss_scale=True)
  built = dataclasses.replace(built, train_fn=step_lib.jit_train_step(
      step_config, built.setup.mesh, built.setup.state_shardings, built.setup.frozen_shardings))
  good = host_batches(built.config, 2)
  empty = dict(good[0], mask=np.zeros_like(good[0]["mask"]))  # 0 targets: NaN loss, not 0
  start = fresh(built, initial).replace(loss_scale=precision.LossScale.create(True))
  state, m = run(built, good[:1], start)
  assert m[0]["finite"] and float(state.loss_scale.scale) == precision.INITIAL_SCALE
  params, opt = flat(state.params), jax.device_get(state.opt_state)
  state, m = run(built, [empty], state)
  assert not m[0]["finite"] and np.isnan(m[0]["loss"])
  assert int(m[0]["skipped"]) == 1 and int(m[0]["skipped_in_a_row"]) == 1
  assert float(state.loss_scale.scale) == precision.INITIAL_SCALE / 2
  assert int(state.step) == 2
  for k, v in flat(state.params).items():
    assert np.array_equal(v, params[k]), k
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), jax.device_get(state.opt_state),
               opt)
  state, m = run(built, good[1:], state)
  assert m[0]["finite"] and int(m[0]["skipped_in_a_row"]) == 0 and int(m[0]["skipped"]) == 1
  # One update applied before the skip, so the schedule is at its second value.
  np.testing.assert_allclose(m[0]["lr"], built.setup.step_config.schedule(1), rtol=1e-6)


def test_bfloat16_computes_low_and_keeps_lora_in_float32(plain):
  built = build(tiny(**{"training.precision": "bfloat16", "training.base_dtype": "bfloat16"}),
                jax.devices()[:1])
  assert {x.dtype for x in jax.tree.leaves(built.setup.frozen.base)} == {jnp.dtype(jnp.bfloat16)}
  # The base stored in bfloat16 is still the same base: adapters name it by its given weights.
  assert built.setup.base_fingerprint == plain[0].setup.base_fingerprint
  state, metrics = run(built, host_batches(built.config, 2))
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
  assert all(np.isfinite(m["loss"]) and m["finite"] for m in metrics)
  assert built.setup.step_config.family.model.config.dtype == "bfloat16"


def test_child_adapter_trains_over_frozen_parent(plain, tmp_path):
  plain, initial = plain
  config, devices = plain.config, jax.devices()[:1]
  # The parent: an adapter over the same (seeded) base, with B randomised so it changes outputs.
  family = plain.setup.step_config.family
  abstract = state_lib.abstract_base(family)
  base = plain.setup.frozen.base
  parent_spec = lora.LoraSpec(rank=2, alpha=2.0, target_modules=("k_proj", "ff.out"))
  targets = lora.resolve(parent_spec, abstract)
  adapter = lora.init_adapter(targets, parent_spec, jax.random.key(5))
  params = jax.tree.map(lambda x: x, adapter.params)
  for t in targets:
    node = params
    for k in t.keys:
      node = node[k]
    node["lora_B"] = 0.5 * jax.random.normal(jax.random.key(6), node["lora_B"].shape)
  record = lora.AdapterRecord(lora.Adapter(params, adapter.scales), parent_spec,
                              lora.fingerprint(base), family.name, "parent")
  parent_path = str(tmp_path / "parent.lora")
  lora.save_adapter(parent_path, record)

  child = build(tiny(**{"training.parent_adapter": parent_path}), devices)
  assert len(child.setup.frozen.parents) == 1
  parent_before = flat(child.setup.frozen.parents[0].params)
  host = host_batches(config, 2)
  # The child's B starts at 0, so before any step only the parent can change the loss.
  batch = jax.device_put(host[0], mesh_lib.batch_sharding(child.setup.mesh))
  with_parent = child.eval_fn(child.setup.state.params, child.setup.frozen, batch)["loss"]
  without = plain.eval_fn(fresh(plain, initial).params, plain.setup.frozen, batch)["loss"]
  assert abs(float(with_parent) - float(without)) > 1e-3
  state, metrics = run(child, host)
  for k, v in flat(child.setup.frozen.parents[0].params).items():
    assert np.array_equal(v, parent_before[k]), k
  trained = flat(state.params)
  assert not any("k_proj" in k for k in trained)  # the parent's module is not the child's
  assert any(np.abs(v).max() > 0 for k, v in trained.items() if k.endswith("lora_B"))
  moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
  assert sum(x.size for x in moments) == 2 * sum(v.size for v in trained.values())
  assert all(np.isfinite(m["loss"]) for m in metrics)


def test_base_loads_from_a_flax_weight_file_in_place(plain, tmp_path):
  built, _ = plain
  path = str(tmp_path / "base.safetensors")
  flax_weights.save_params(built.setup.frozen.base, path)
  config = tiny(**{"training.base_params": path})
  family = built.setup.step_config.family
  abstract = state_lib.abstract_base(family)
  shardings = mesh_lib.param_shardings(family.partition_rules, abstract, built.setup.mesh)
  loaded, fingerprint = state_lib.base_params(config, family, abstract, shardings, "bfloat16")
  assert fingerprint == built.setup.base_fingerprint  # the base as given, not as stored
  want = flat(built.setup.frozen.base)
  for k, v in flat(loaded).items():
    assert v.dtype == jnp.bfloat16
    np.testing.assert_array_equal(v, want[k].astype(jnp.bfloat16), err_msg=k)
  assert jax.tree.leaves(loaded)[0].sharding == jax.tree.leaves(shardings)[0]


def test_accumulation_with_unequal_masks_is_the_whole_batch_gradient(plain):
  """Micro-batches holding different numbers of target tokens: the accumulated update is the one
  a single [16]-example step takes (the mean over all tokens), not the mean of 4 micro-batch
  means, which this data would make visibly different."""
  built, initial = plain
  host = host_batches(built.config, 2)
  for b in host:  # make the micro-batches' target counts very unequal
    b["mask"][:4, 8:] = 0.0
  counts = [b["mask"][i * 4:(i + 1) * 4, 1:].sum() for b in host[:1] for i in range(4)]
  assert max(counts) > 1.3 * min(counts)
  s1, m1 = run(built, host, fresh(built, initial))
  four = dataclasses.replace(built, config=dataclasses.replace(
      built.config, opt=dataclasses.replace(built.config.opt, grad_accum_steps=4)))
  s4, m4 = run(four, host, fresh(built, initial))
  for ref, got in zip(m1, m4):
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-5)
    np.testing.assert_allclose(got["grad_norm"], ref["grad_norm"], rtol=1e-4)
  p1, p4 = flat(s1.params), flat(s4.params)
  for k in p1:
    np.testing.assert_allclose(p4[k], p1[k], rtol=1e-4, atol=1e-6, err_msg=k)
  # The data tells the two apart: weighted by their counts, the micro-batches' mean losses give
  # the whole batch's loss; unweighted, they do not.
  params = fresh(built, initial).params
  whole = float(built.eval_fn(params, built.setup.frozen, host[0])["loss"])
  micro = batches.micro_batches(host[0], 4)
  means = [float(built.eval_fn(params, built.setup.frozen, {k: v[i] for k, v in micro.items()})
                 ["loss"]) for i in range(4)]
  np.testing.assert_allclose(np.average(means, weights=counts), whole, rtol=1e-5)
  assert abs(np.mean(means) - whole) > 1e-3
