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

Over a quantised base (`training.quantize`, QLoRA) the reset is `jit_reset_quantized`: the fold
runs on the device for the adapted kernels only, dequantised to float32 (W' = deq(W_q) + s A B, or
DoRA's whole kernel), and each folded kernel is re-quantised on the host by the same numpy
quantiser, kind and block layout that quantised the base at the start (`quant.quantize`: its NF4
offset is a mean, whose XLA sum would depend on the mesh), then put back with its shardings.
Kernels no adapter touches keep their codes. The float32 copies exist only during the reset and
only for the adapted kernels; the base stays quantised, and, as every ReLoRA base, is checkpointed
(codes and scales), so resume stays bit-exact. What re-quantising each fold costs is measured in
docs/relora.md.

Export: the sum of the folded deltas is not low rank, so no adapter file holds what the run
learned; the run exports the merged model (`params.safetensors`: the folded base plus the last
adapter, and any parent), which `training.base_params` and every tool that takes a base read.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lora_jax import lora, quant, tree_paths
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
  return restart(state, key_data, new_base, every=every, targets=targets, spec=spec, dtype=dtype,
                 tx=tx), new_base


def restart(state: state_lib.TrainState, key_data: jax.Array, folded: Any, *, every: int,
            targets: tuple, spec: lora.LoraSpec, dtype: Any, tx: optax.GradientTransformation
            ) -> state_lib.TrainState:
  """Steps 2 and 3 of a reset: fresh factors from the reset's key, optimiser state restarted.

  `folded` (a tree holding at least the adapted kernels, after the fold) gives a DoRA adapter's
  fresh magnitudes: the folded kernels' column norms, so with B = 0 the function is unchanged.
  """
  key = jax.random.fold_in(jax.random.wrap_key_data(key_data), state.step // every)
  params = lora.init_params(targets, spec, key, dtype, folded if spec.use_dora else None)
  return state.replace(params=params, opt_state=_restart_opt_state(tx, params, state.opt_state))


def adapted_kernels(base: Any, adapter: lora.Adapter) -> dict:
  """{module keys + ('kernel',): the base's kernel} of the modules `adapter` adapts."""
  flat = tree_paths.flatten(base, is_leaf=quant.is_quantized)
  return {keys + ("kernel",): flat[keys + ("kernel",)] for keys in adapter.modules()}


def fold_quantized(state: state_lib.TrainState, base: Any, scales: Any, key_data: jax.Array,
                   **kw) -> tuple[state_lib.TrainState, dict]:
  """The restarted state and {kernel keys: folded kernel} of the adapted kernels, in float32
  where the kernel is quantised (to be re-quantised on the host), in its dtype otherwise."""
  adapter = lora.Adapter(state.params, scales)
  kernels = adapted_kernels(base, adapter)
  folded = lora.merge(tree_paths.unflatten(kernels), [adapter])
  # DoRA's fresh magnitudes are the float fold's norms: the re-quantisation's rounding is then
  # the only change of function at the reset, as for plain LoRA.
  return restart(state, key_data, folded, **kw), tree_paths.flatten(folded)


def requantize(folded: dict, base: Any, kind: str, base_shardings: Any) -> Any:
  """`base` with each folded kernel put in place, re-quantised as `kind` where it was quantised."""
  flat = tree_paths.flatten(base, is_leaf=quant.is_quantized)
  flat_sh = tree_paths.flatten(base_shardings, is_leaf=quant.is_quantized)
  was_quantized = [k for k in folded if quant.is_quantized(flat[k])]
  host = state_lib.host_params({tree_paths.dotted(k): folded[k] for k in was_quantized})
  for keys, value in folded.items():
    if keys in was_quantized:
      q = quant.quantize(host[tree_paths.dotted(keys)], kind, tree_paths.dotted(keys))
      flat[keys] = jax.device_put(q, flat_sh[keys])
    else:
      flat[keys] = value
  return tree_paths.unflatten(flat)


def jit_reset_quantized(config: TrainConfig, setup: state_lib.Setup):
  """`fn(state, base) -> (state, base)` over a quantised base (module docstring); state donated."""
  pol = precision.policy(config.training.precision, config.training.base_dtype)
  fn = functools.partial(fold_quantized, every=config.training.relora_every,
                         targets=setup.targets, spec=config.lora,
                         dtype=jnp.dtype(pol.param_dtype), tx=setup.step_config.tx)
  rep = jax.tree.leaves(setup.frozen_shardings.scales)[0]
  base_sh = tree_paths.flatten(setup.frozen_shardings.base, is_leaf=quant.is_quantized)
  # A folded float kernel takes the partition spec of the quantised one's codes ([in, out] or
  # [in / 2, out]: the same spec), or its own where the kernel is not quantised.
  folded_sh = {k: (s.codes if quant.is_quantized(s) else s)
               for k, s in base_sh.items() if k[-1] == "kernel"}
  adapted = {t.keys + ("kernel",) for t in setup.targets}
  jitted = jax.jit(fn, in_shardings=(setup.state_shardings, setup.frozen_shardings.base,
                                     setup.frozen_shardings.scales, rep),
                   out_shardings=(setup.state_shardings,
                                  {k: v for k, v in folded_sh.items() if k in adapted}),
                   donate_argnums=(0,))
  key, scales = reset_key(config.training.seed), setup.frozen.scales
  kind, shardings = config.training.quantize, setup.frozen_shardings.base

  def run(state, base):
    state, folded = jitted(state, base, scales, key)
    return state, requantize(folded, base, kind, shardings)

  return run


def reset_key(seed: int) -> jax.Array:
  """uint32[2] key data of the ReLoRA stream of the run's seed."""
  return jax.random.key_data(jax.random.fold_in(jax.random.key(seed), state_lib.RELORA))


def jit_reset(config: TrainConfig, setup: state_lib.Setup):
  """`fn(state, base) -> (state, base)`: `reset` jitted once, state and base donated."""
  if config.training.quantize:
    return jit_reset_quantized(config, setup)
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
