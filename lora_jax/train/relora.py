"""ReLoRA (Lialin et al. 2023): a high-rank update built from low-rank stretches of training.

Every `training.relora_every` train steps the loop calls `reset`, one jitted function with the run's
shardings (nothing goes through the host):
  1. fold: base' = cast(base + s A B) for every adapted kernel, in float32, through `lora.merge`
     (the fold every export uses); the base is donated, so it is rewritten in place;
  2. restart: A drawn fresh from fold_in(fold_in(seed key, RELORA), reset index), B = 0, so the
     model's function is unchanged by the reset up to the rounding of the fold;
  3. forget: the optimiser state re-initialised (Adam's moments and its bias-correction count
     back to zero) except the schedule's own count, so the run's warm-up and decay go on where
     they were; the step then re-warms the learning rate linearly over `relora_warmup` steps
     (`step.rewarm_factor`): the paper's jagged schedule. LoRAW's original never reset the
     optimiser, so its first steps after a fold pushed the new factors along the old ones' moments.
Resets fall on train steps that are multiples of `relora_every` (a skipped non-finite step counts:
it consumed its batch), so a resumed run meets them at the same steps.

The base changes, so with ReLoRA it is checkpointed state (`Checkpoints.save(base=...)`) and
restored on resume: a run stopped before or after a reset resumes bit for bit.

Export: the sum of the folded deltas is not low rank, so no adapter file holds what the run
learned; the run exports the merged model (`params.safetensors`: the folded base plus the last
adapter, and any parent), which `training.base_params` and every tool that takes a base read.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lora_jax import lora
from lora_jax.train import precision
from lora_jax.train import state as state_lib
from lora_jax.train.config import TrainConfig


def _restart_opt_state(tx: optax.GradientTransformation, params: Any, old: Any) -> Any:
  """`tx.init(params)`, keeping the schedule's step count from `old`."""
  is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)
  return jax.tree.map(lambda new, kept: kept if is_schedule(new) else new, tx.init(params), old,
                      is_leaf=is_schedule)


def reset(state: state_lib.TrainState, base: Any, scales: Any, key_data: jax.Array, *,
          every: int, targets: tuple, spec: lora.LoraSpec, dtype: Any,
          tx: optax.GradientTransformation) -> tuple[state_lib.TrainState, Any]:
  """Fold the adapter into `base`, restart its factors and optimiser state (module docstring)."""
  new_base = lora.merge(base, [lora.Adapter(state.params, scales)])
  key = jax.random.fold_in(jax.random.wrap_key_data(key_data), state.step // every)
  params = lora.init_params(targets, spec, key, dtype)
  return state.replace(params=params,
                       opt_state=_restart_opt_state(tx, params, state.opt_state)), new_base


def reset_key(seed: int) -> jax.Array:
  """uint32[2] key data of the ReLoRA stream of the run's seed."""
  return jax.random.key_data(jax.random.fold_in(jax.random.key(seed), state_lib.RELORA))


def jit_reset(config: TrainConfig, setup: state_lib.Setup):
  """`fn(state, base) -> (state, base)`: `reset` jitted once, state and base donated."""
  pol = precision.policy(config.training.precision, config.training.base_dtype)
  fn = functools.partial(reset, every=config.training.relora_every, targets=setup.targets,
                         spec=config.lora, dtype=jnp.dtype(pol.param_dtype),
                         tx=setup.step_config.tx)
  rep = jax.tree.leaves(setup.frozen_shardings.scales)[0]
  jitted = jax.jit(fn, in_shardings=(setup.state_shardings, setup.frozen_shardings.base,
                                     setup.frozen_shardings.scales, rep),
                   out_shardings=(setup.state_shardings, setup.frozen_shardings.base),
                   donate_argnums=(0, 1))
  key = reset_key(config.training.seed)
  scales = setup.frozen.scales
  return lambda state, base: jitted(state, base, scales, key)


def abstract_base(setup: state_lib.Setup) -> Any:
  """Shapes, dtypes and shardings of the frozen base: the target of a checkpoint restore."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      setup.frozen.base, setup.frozen_shardings.base)


@jax.jit
def merged_model(base: Any, adapters: tuple) -> Any:
  """The model a ReLoRA run trained: the folded base with the last adapter (and parents) merged."""
  return lora.merge(base, adapters)
