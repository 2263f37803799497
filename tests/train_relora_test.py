"""ReLoRA: the reset folds the adapter's delta into the base and restarts the factors and the
optimiser; the learning rate re-warms; a run stopped before or at a reset resumes bit for bit on
8 devices (adapter, base and export); the flag, the config checks and the export."""

import dataclasses
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from lora_jax import families, lora, tree_paths
from lora_jax.interop import flax_weights
from lora_jax.train import batches, checkpoint
from lora_jax.train import config as config_lib
from lora_jax.train import loop
from lora_jax.train import mesh as mesh_lib
from lora_jax.train import relora
from lora_jax.train import state as state_lib
from lora_jax.train import step as step_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "music_lm.py")
EVERY, WARMUP = 4, 2


def tiny(**overrides) -> config_lib.TrainConfig:
  return config_lib.load(CONFIG, "tiny", {
      "model.n_layers": 1, "training.relora_every": EVERY, "training.relora_warmup": WARMUP,
      "lora.target_modules": ("q_proj", "ff.in", "head"), **overrides})


def flat(tree) -> dict:
  return {tree_paths.dotted(k): np.asarray(v) for k, v in tree_paths.flatten(tree).items()}


def test_reset_folds_the_delta_and_restarts_factors_and_moments():
  config = tiny(**{"mesh.data": 1})
  family = families.lookup("music_lm").make(config.model, "float32")
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
  setup = state_lib.setup(config, family, mesh)
  train_fn = step_lib.jit_train_step(setup.step_config, mesh, setup.state_shardings,
                                     setup.frozen_shardings)
  eval_fn = step_lib.jit_eval_step(setup.step_config, mesh, setup.state_shardings.params,
                                   setup.frozen_shardings)
  data = family.synthetic(8 * config.data.batch_size, 7)
  it = batches.BatchIterator(data, config.data.batch_size, seed=3)
  host = [next(it)[0] for _ in range(8)]
  put = lambda b: jax.device_put(batches.micro_batches(b, 1), mesh_lib.batch_sharding(mesh, 1))
  state, frozen = setup.state, setup.frozen
  for b in host[:EVERY]:
    state, _ = train_fn(state, frozen, put(b))
  base_before, params_before = flat(frozen.base), flat(state.params)
  assert any(np.abs(v).max() > 0 for k, v in params_before.items() if k.endswith("lora_B"))
  opt_before = jax.device_get(state.opt_state)
  val = jax.device_put(host[-1], mesh_lib.batch_sharding(mesh))
  loss_before = float(eval_fn(state.params, frozen, val)["loss"])
  want_base = flat(lora.merge(frozen.base, [lora.Adapter(state.params, frozen.scales)]))

  state, base = relora.jit_reset(config, setup)(state, frozen.base)
  frozen = frozen.replace(base=base)
  # The delta went into the adapted kernels, in float32, and nowhere else.
  got_base = flat(base)
  for k, v in got_base.items():
    adapted = any(k == m + ".kernel" for m in ("blocks.0.attn.q_proj", "blocks.0.ff.in", "head"))
    assert adapted != np.array_equal(v, base_before[k]), k
    np.testing.assert_allclose(v, want_base[k], rtol=1e-6, atol=1e-7, err_msg=k)
  # A fresh A from the reset's own key, B zero: the model's function is unchanged.
  params = flat(state.params)
  fresh_a = flat(lora.init_params(setup.targets, config.lora, jax.random.fold_in(
      jax.random.wrap_key_data(relora.reset_key(config.training.seed)), 1)))
  for k, v in params.items():
    if k.endswith("lora_B"):
      assert not v.any(), k
    else:
      assert np.array_equal(v, fresh_a[k]) and not np.array_equal(v, params_before[k]), k
  np.testing.assert_allclose(float(eval_fn(state.params, frozen, val)["loss"]), loss_before,
                             rtol=1e-5)
  # Adam's moments and bias-correction count restart; the schedule's count goes on.
  opt = jax.device_get(state.opt_state)
  adam = [s for s in jax.tree.leaves(opt, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
          if isinstance(s, optax.ScaleByAdamState)]
  assert adam and all(int(s.count) == 0 and not any(x.any() for x in jax.tree.leaves((s.mu, s.nu)))
                      for s in adam)
  counts = [int(c) for _, c in optax.tree_utils.tree_get_all_with_path(opt, "count")
            if c is not None]
  old_counts = [int(c) for _, c in optax.tree_utils.tree_get_all_with_path(opt_before, "count")]
  assert sorted(counts) == sorted([0] * len(adam) + [c for c in old_counts if c == EVERY][
      :len(old_counts) - len(adam)])
  # The jagged schedule: the run's rate times min(1, steps since the reset / warmup).
  lrs = []
  for b in host[EVERY:EVERY + 3]:
    state, m = train_fn(state, frozen, put(b))
    lrs.append(float(m["lr"]))
  sched = setup.step_config.schedule
  np.testing.assert_allclose(lrs, [0.0, 0.5 * sched(EVERY + 1), sched(EVERY + 2)], rtol=1e-6)


RUN = {"training.steps": 10, "training.eval_every": 3, "ckpt.every_steps": 3,
       "training.log_every": 1, "mesh.data": 4, "mesh.fsdp": 2, "ckpt.export": "final"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """10 steps with resets at 4 and 8: straight through, stopped at 3 (before a reset) and at 4
  (the checkpoint right after one), each resumed."""
  config = tiny(**RUN)
  out = {"config": config}
  for name, stop in (("whole", None), ("before", 3), ("at", 4)):
    workdir = str(tmp_path_factory.mktemp(name))
    if stop is not None:
      stopped = loop.train(config, workdir, stop_after=stop)
      assert stopped.status == "stopped" and stopped.step == stop
    out[name] = (workdir, loop.train(config, workdir))
  return out


def saved_base(workdir, config, step):
  """The base a checkpoint holds, as a host tree."""
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"), config.ckpt)
  try:
    return jax.device_get(ckpts.manager.restore(step, args=checkpoint.ocp.args.Composite(
        base=checkpoint.ocp.args.StandardRestore())).base)
  finally:
    ckpts.close()


def load_export(path, config) -> dict:
  family = families.lookup("music_lm").make(config.model, "float32")
  return flat(flax_weights.load_params(path, state_lib.abstract_base(family)))


@pytest.mark.parametrize("name", ["before", "at"])
def test_resume_across_a_reset_is_bit_exact(runs, name):
  config = runs["config"]
  whole_dir, whole = runs["whole"]
  workdir, resumed = runs[name]
  assert resumed.status == whole.status == "finished" and resumed.step == 10
  a, b = flat(whole.params), flat(resumed.params)
  for k in a:
    assert np.array_equal(a[k], b[k]), k
  assert resumed.val_loss == whole.val_loss
  base_a, base_b = (flat(saved_base(d, config, 10)) for d in (whole_dir, workdir))
  for k in base_a:
    assert np.array_equal(base_a[k], base_b[k]), k
  export_a, export_b = (load_export(r.export_path, config) for r in (whole, resumed))
  for k in export_a:
    assert np.array_equal(export_a[k], export_b[k]), k


def test_the_run_exports_the_merged_model(runs):
  config = runs["config"]
  workdir, result = runs["whole"]
  assert result.export_path == os.path.join(workdir, "params.safetensors")
  assert not os.path.exists(os.path.join(workdir, "adapter.lora"))
  meta = flax_weights.read_metadata(result.export_path)
  assert meta["model_family"] == "music_lm"
  # The checkpointed base holds the folds of steps 4 and 8: it is no longer the base given.
  base = saved_base(workdir, config, 10)
  assert lora.fingerprint(base) != meta["base_fingerprint"]
  # The export is that base with the last adapter (steps 9 and 10) merged in.
  family = families.lookup("music_lm").make(config.model, "float32")
  scales = lora.scales_of(lora.resolve(config.lora, state_lib.abstract_base(family)))
  want = flat(lora.merge(base, [lora.Adapter(result.params, scales)]))
  exported = load_export(result.export_path, config)
  assert want.keys() == exported.keys()
  for k, v in want.items():
    np.testing.assert_allclose(exported[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
  assert any(not np.array_equal(exported[k], v) for k, v in flat(base).items())


def test_config_checks():
  with pytest.raises(config_lib.ConfigError, match="needs training.type 'lora'"):
    tiny(**{"training.type": "full"})
  with pytest.raises(config_lib.ConfigError, match=r"relora_warmup 5 in \[0, relora_every\]"):
    tiny(**{"training.relora_every": 4, "training.relora_warmup": 5})
  with pytest.raises(config_lib.ConfigError, match="relora_every -1 must be >= 0"):
    tiny(**{"training.relora_every": -1, "training.relora_warmup": 0})


def test_a_relora_checkpoint_does_not_resume_as_plain_lora(runs):
  config = dataclasses.replace(runs["config"], training=dataclasses.replace(
      runs["config"].training, relora_every=0, relora_warmup=0, steps=12))
  with pytest.raises(ValueError, match="relora_every 4"):
    loop.train(config, runs["whole"][0])


def test_launch_flag(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu")
  workdir = tmp_path / "run"
  out = subprocess.run(
      [sys.executable, str(ROOT / "launch" / "train.py"), f"--config={CONFIG}:tiny",
       "--config.model.n_layers=1", "--config.training.steps=4", "--relora-every=2",
       f"--workdir={workdir}"], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert (workdir / "params.safetensors").exists() and not (workdir / "adapter.lora").exists()
  bad = subprocess.run(
      [sys.executable, str(ROOT / "launch" / "train.py"), f"--config={CONFIG}:tiny",
       "--config.training.type=full", "--relora-every=2", f"--workdir={tmp_path / 'bad'}"],
      env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 1 and "needs training.type 'lora'" in bad.stderr, bad.stderr[-2000:]
  assert not (tmp_path / "bad").exists()
