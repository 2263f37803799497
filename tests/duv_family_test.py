"""The duv family: masked losses, refusals instead of zero losses, sharding rules, and a LoRA on the
seed's targets that adapts exactly those modules and learns."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from lora_jax import lora
from lora_jax.families import duv
from lora_jax.lora.spec import count_by_rule
from lora_jax.train import mesh as mesh_lib

TINY = duv.DuvConfig(n_features=17, d_model=32, n_heads=4, n_layers=2, d_ff=48, max_len=16,
                     dropout=0.0, seq_len=12, vel_weight=1.0, dur_weight=1.0)
SEED_TARGETS = ("attn.q_proj", "attn.v_proj", "attn.out_proj", "ff.in", "ff.out")


def _family():
  family = duv.make(TINY, "float32")
  batch = family.synthetic(8, 0)
  params = family.model.init(jax.random.key(0), *family.model_args(batch))["params"]
  return family, batch, params


def test_loss_is_a_mean_over_real_notes_only():
  family = duv.make(TINY, "float32")
  mask = np.array([[True, True, False]])
  outputs = {"velocity": jnp.array([[70.0, 50.0, 1.0]]),
             "dur_beats": jnp.array([[1.0, 0.25, 9.0]])}
  targets = np.array([[[64.0, 3.0], [60.0, 0.5], [0.0, 0.0]]], np.float32)
  loss, m = family.loss_fn(outputs, {"targets": targets, "mask": mask})
  vel = (6.0 + 10.0) / 2 / 127.0
  dur = (2.0 + 0.25) / 2  # L1 in beats
  np.testing.assert_allclose(m["vel_loss"], vel, rtol=1e-6)
  np.testing.assert_allclose(m["vel_mae_midi"], 8.0, rtol=1e-6)
  np.testing.assert_allclose(m["dur_loss"], dur, rtol=1e-6)
  np.testing.assert_allclose(loss, vel + dur, rtol=1e-6)
  # Whatever padding holds, in targets or outputs, the loss does not move.
  junk_out = {k: v.at[0, 2].set(1e4) for k, v in outputs.items()}
  junk_targets = targets.copy()
  junk_targets[0, 2] = [127.0, 50.0]
  loss2, _ = family.loss_fn(junk_out, {"targets": junk_targets, "mask": mask})
  assert float(loss2) == float(loss)


def test_weights_and_empty_mask():
  config = duv.DuvConfig(**{**TINY.__dict__, "vel_weight": 2.0, "dur_weight": 0.5})
  family = duv.make(config, "float32")
  outputs = {"velocity": jnp.full((1, 2), 70.0), "dur_beats": jnp.full((1, 2), 1.0)}
  targets = np.array([[[64.0, 1.5], [64.0, 1.5]]], np.float32)
  loss, m = family.loss_fn(outputs, {"targets": targets, "mask": np.ones((1, 2), bool)})
  np.testing.assert_allclose(loss, 2.0 * m["vel_loss"] + 0.5 * m["dur_loss"], rtol=1e-6)
  # An empty batch is NaN (the loop counts and skips it), never a zero loss.
  loss, _ = family.loss_fn(outputs, {"targets": targets, "mask": np.zeros((1, 2), bool)})
  assert np.isnan(loss)


def test_missing_targets_are_errors_not_zero_losses():
  family = duv.make(TINY, "float32")
  outputs = {"velocity": jnp.ones((1, 2)), "dur_beats": jnp.ones((1, 2))}
  mask = np.ones((1, 2), bool)
  with pytest.raises(duv.MissingTargetError, match=r"needs batch arrays 'targets'.*holds "
                                                   r"\['mask'\]"):
    family.loss_fn(outputs, {"mask": mask})
  with pytest.raises(duv.MissingTargetError, match="targets have 1 columns"):
    family.loss_fn(outputs, {"targets": np.ones((1, 2, 1), np.float32), "mask": mask})
  with pytest.raises(duv.MissingTargetError, match=r"lack \['dur_beats'\]"):
    family.loss_fn({"velocity": jnp.ones((1, 2))},
                   {"targets": np.ones((1, 2, 2), np.float32), "mask": mask})
  # Under jit too: the check runs while tracing.
  with pytest.raises(duv.MissingTargetError):
    jax.jit(family.loss_fn)(outputs, {"mask": mask})


def test_family_surface():
  family, batch, params = _family()
  family.check_arrays(batch, "synthetic")
  assert family.inputs == ("inputs", "mask", "written_dur")
  out = family.model.apply({"params": params}, *family.model_args(batch))
  assert out["velocity"].shape == (8, TINY.seq_len)
  loss, m = family.loss_fn(out, batch)
  assert np.isfinite(loss) and sorted(m) == ["dur_loss", "vel_loss", "vel_mae_midi"]
  # Untrained, every duration is the written one: the loss starts at "keep it as written".
  np.testing.assert_array_equal(np.asarray(out["dur_beats"]), batch["written_dur"])
  with pytest.raises(ValueError, match="model.seq_len 20 exceeds model.max_len 16"):
    duv.make(duv.DuvConfig(**{**TINY.__dict__, "seq_len": 20}), "float32")


def test_partition_rules_cover_every_parameter_on_a_mesh():
  _, _, params = _family()
  devices = np.array(jax.devices()[:8]).reshape(2, 2, 2)
  mesh = Mesh(devices, mesh_lib.AXES)
  shardings = mesh_lib.param_shardings(duv.PARTITION_RULES, params, mesh)
  spec = shardings["blocks_0"]["attn"]["q_proj"]["kernel"].spec
  assert tuple(spec) == ("fsdp", "model")
  assert tuple(shardings["blocks_1"]["ff"]["out"]["kernel"].spec) == ("model", "fsdp")


def test_seed_lora_targets_resolve_to_exactly_the_intended_modules():
  _, _, params = _family()
  spec = lora.LoraSpec(rank=8, alpha=16.0, target_modules=SEED_TARGETS)
  targets = lora.resolve(spec, params)
  wanted = {f"blocks.{i}.{t}" for i in range(TINY.n_layers) for t in SEED_TARGETS}
  assert {t.path for t in targets} == wanted
  counts = count_by_rule(spec, targets)
  assert set(counts) == set(SEED_TARGETS) and all(c > 0 for c in counts.values()), counts
  # q/k/v/out are 32x32, ff.in 32x48, ff.out 48x32: rank 8 parameters per rule and layer.
  assert counts["attn.q_proj"] == TINY.n_layers * 8 * (32 + 32)
  assert counts["ff.in"] == TINY.n_layers * 8 * (32 + 48)


def test_lora_on_seed_targets_is_used_and_learns():
  family, batch, params = _family()
  spec = lora.LoraSpec(rank=4, alpha=8.0, target_modules=SEED_TARGETS)
  targets = lora.resolve(spec, params)
  adapter = lora.init_adapter(targets, spec, jax.random.key(1))
  tx = optax.adam(1e-2)

  def loss(lora_params):
    active = lora.Active(lora.Adapter(lora_params, adapter.scales), 1.0)
    out = lora.apply(family.model, params, [active], *family.model_args(batch))
    return family.loss_fn(out, batch)[0]

  @jax.jit
  def step(p, opt):
    value, grads = jax.value_and_grad(loss)(p)
    updates, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, updates), opt, value, grads

  p, opt = adapter.params, tx.init(adapter.params)
  first_grads = None
  losses = []
  for _ in range(25):
    p, opt, value, grads = step(p, opt)
    first_grads = grads if first_grads is None else first_grads
    losses.append(float(value))
  # Every adapted module gets a gradient (B = 0 at start, so A's is zero: look at B).
  for keys, (_, b, _) in lora.Adapter(first_grads, adapter.scales).modules().items():
    assert float(jnp.abs(b).max()) > 0, keys
  assert losses[-1] < 0.8 * losses[0], losses
