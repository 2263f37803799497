"""The pure train and eval steps every family shares, and their one-time jit.

`train_step(state, frozen, batch)` takes a batch shaped [accum, micro, ...], differentiates the
family's loss with respect to the trainable tree only (the adapter's factors, or the whole model),
averages over the micro-batches inside a `lax.scan` (weighted by the family's `loss_weight`, so
the result is the whole batch's gradient however its targets fall), and applies one optimiser
update. The frozen
base and any parent adapter are arguments, never outputs: they are never donated, never
differentiated, never updated.

A non-finite loss or gradient keeps the old parameters and optimiser state (and, in float16,
halves the loss scale); the step and the skip counters still advance, so the loop sees it.

Randomness: the step's key is fold_in(run key, step), then fold_in(micro-batch index). Dropout
masks are drawn for the global batch with the partitionable threefry generator, so each device
draws the bits of its own shard (per-device randomness) while the values stay those of the global
array: a run gives the same numbers on one device or on any mesh, and the seed reproduces it.
A family's `prepare` (diffusion time and noise) draws from fold_in(micro-batch key, PREPARE),
apart from the dropout keys (a split of the micro-batch key), so adding it shifts nothing else;
evaluation prepares with fold_in(key(EVAL_SEED), batch index): the same draws at every evaluation.

ReLoRA (`relora_every` > 0, see `lora_jax.train.relora`): after each reset the update is scaled by
min(1, steps since the reset / relora_warmup), the jagged re-warm, on top of the run's schedule.
Resets fall on train steps that are multiples of `relora_every`, so the factor is a function of
the step alone and resume reproduces it.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from lora_jax import lora
from lora_jax.train import activation_sharding
from lora_jax.train import mesh as mesh_lib
from lora_jax.train import precision
from lora_jax.train.family import Batch, Family

PREPARE = 1  # fold_in constant of `prepare`'s stream; dropout's keys are a split, never a fold
EVAL_SEED = 0  # evaluation prepares its batches from this key whatever the run's seed


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the step needs besides arrays; bound before the jit, so it is compiled in."""

  family: Family
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  dynamic_loss_scale: bool
  trains_base: bool
  lora_dropout: float
  lora_module_dropout: float
  relora_every: int = 0  # ReLoRA reset period in train steps; 0 is plain LoRA
  relora_warmup: int = 0  # steps of linear re-warm after each reset
  # Set by jit_train_step / jit_eval_step: layer activations are pinned to its batch split.
  mesh: Mesh | None = None


def prepare(config: StepConfig, batch: Batch, key: jax.Array) -> Batch:
  """The batch the model and loss read: the family's `prepare` with `key`, or `batch` as it is."""
  if config.family.prepare is None:
    return batch
  return config.family.prepare(batch, jax.random.fold_in(key, PREPARE))


def rewarm_factor(config: StepConfig, step: jax.Array) -> jax.Array:
  """ReLoRA's jagged re-warm: 1 before the first reset, then min(1, (step mod N) / warmup)."""
  if config.relora_warmup == 0:
    return jnp.float32(1.0)
  since = (step % config.relora_every).astype(jnp.float32)
  ramp = jnp.minimum(1.0, since / jnp.float32(config.relora_warmup))
  return jnp.where(step < config.relora_every, jnp.float32(1.0), ramp)


def forward(config: StepConfig, params: Any, frozen: Any, batch: Batch,
            key: jax.Array | None) -> Any:
  """The family model's outputs with the adapters injected; `key` None is evaluation."""
  if config.trains_base:
    base, actives = params, []
  else:
    base = frozen.base
    actives = [lora.Active(parent, 1.0) for parent in frozen.parents]
    actives.append(lora.Active(lora.Adapter(params, frozen.scales), 1.0, config.lora_dropout,
                               config.lora_module_dropout))
  args = config.family.model_args(batch)
  rows = jax.tree.leaves(batch)[0].shape[0]
  with activation_sharding.batch_split(config.mesh, rows):
    if key is None:
      return lora.apply(config.family.model, base, actives, *args, deterministic=True)
    dropout_key, lora_key = jax.random.split(key)
    return lora.apply(config.family.model, base, actives, *args, rng=lora_key,
                      deterministic=False, rngs={"dropout": dropout_key})


def train_step(state: Any, frozen: Any, batch_AxB: Batch, *,
               config: StepConfig) -> tuple[Any, dict[str, jax.Array]]:
  """One optimiser step over `accum` micro-batches; returns the new state and its metrics."""
  accum = jax.tree.leaves(batch_AxB)[0].shape[0]
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  def loss_and_grads(micro: Batch, index: jax.Array):
    micro_key = jax.random.fold_in(key, index)
    micro = prepare(config, micro, micro_key)

    def scaled_loss(params):
      outputs = forward(config, params, frozen, micro, micro_key)
      loss, metrics = config.family.loss_fn(outputs, micro)
      return state.loss_scale.scale_loss(loss), (loss, metrics)
    grads, (loss, metrics) = jax.grad(scaled_loss, has_aux=True)(state.params)
    return grads, loss, metrics

  def weighted(micro: Batch, index: jax.Array):
    # Each micro-batch's mean times its count sums to the whole batch's total (see Family).
    weight = (jnp.float32(1.0) if config.family.loss_weight is None
              else config.family.loss_weight(micro).astype(jnp.float32))
    return jax.tree.map(lambda x: x * weight, loss_and_grads(micro, index)), weight

  def accumulate(total, xs):
    return jax.tree.map(jnp.add, total, weighted(*xs)), None

  micro_0 = jax.tree.map(lambda x: x[0], batch_AxB)
  if accum == 1:
    # No loop: XLA optimises across the whole step (a while loop is a fusion barrier on CPU).
    grads, loss, metrics = loss_and_grads(micro_0, jnp.int32(0))
  else:
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(weighted, micro_0, jnp.int32(0)))
    (total, weight), _ = jax.lax.scan(accumulate, zeros, (batch_AxB, jnp.arange(accum)))
    grads, loss, metrics = jax.tree.map(lambda x: x / weight, total)
  grads = state.loss_scale.unscale(grads)

  finite = jnp.isfinite(loss) & precision.all_finite(grads)
  updates, new_opt_state = config.tx.update(grads, state.opt_state, state.params)
  lr_factor = jnp.float32(1.0)
  if config.relora_every:
    lr_factor = rewarm_factor(config, state.step)
    updates = jax.tree.map(lambda u: u * lr_factor, updates)
  new_params = optax.apply_updates(state.params, updates)
  keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  applied = state.step - state.skipped  # optimiser updates so far: what the schedule counts
  skipped = state.skipped + (~finite).astype(jnp.int32)
  in_a_row = jnp.where(finite, 0, state.skipped_in_a_row + 1).astype(jnp.int32)
  new_state = state.replace(
      step=state.step + 1,
      params=keep_if_finite(new_params, state.params),
      opt_state=keep_if_finite(new_opt_state, state.opt_state),
      loss_scale=state.loss_scale.adjust(finite, config.dynamic_loss_scale),
      skipped=skipped,
      skipped_in_a_row=in_a_row)
  out = {"loss": loss, **metrics,
         "lr": jnp.asarray(config.schedule(applied), jnp.float32) * lr_factor,
         "grad_norm": optax.tree.norm(grads),
         "finite": finite,
         "skipped": skipped,
         "skipped_in_a_row": in_a_row,
         "loss_scale": state.loss_scale.scale}
  return new_state, out


def eval_step(params: Any, frozen: Any, batch: Batch, index: jax.Array, *,
              config: StepConfig) -> dict[str, jax.Array]:
  """The family's loss and metrics on validation batch number `index`, without dropout."""
  batch = prepare(config, batch, jax.random.fold_in(jax.random.key(EVAL_SEED), index))
  loss, metrics = config.family.loss_fn(forward(config, params, frozen, batch, None), batch)
  return {"loss": loss, **metrics}


def jit_train_step(config: StepConfig, mesh: Mesh, state_shardings: Any, frozen_shardings: Any):
  """`train_step` jitted once: explicit shardings, the train state donated, the frozen not."""
  config = dataclasses.replace(config, mesh=mesh)
  return jax.jit(functools.partial(train_step, config=config),
                 in_shardings=(state_shardings, frozen_shardings,
                               mesh_lib.batch_sharding(mesh, leading=1)),
                 out_shardings=(state_shardings, mesh_lib.replicated(mesh)),
                 donate_argnums=0)


def jit_eval_step(config: StepConfig, mesh: Mesh, param_shardings: Any, frozen_shardings: Any):
  """`eval_step` jitted once with explicit shardings, nothing donated, called as
  `fn(params, frozen, batch, index=0)` (`index` is data: a new one does not recompile)."""
  rep = mesh_lib.replicated(mesh)
  config = dataclasses.replace(config, mesh=mesh)
  jitted = jax.jit(functools.partial(eval_step, config=config),
                   in_shardings=(param_shardings, frozen_shardings, mesh_lib.batch_sharding(mesh),
                                 rep),
                   out_shardings=rep)
  return lambda params, frozen, batch, index=0: jitted(params, frozen, batch, np.int32(index))
