"""What a run holds, split by what trains: the donated `TrainState` and the never-donated `Frozen`.

Built shapes first: the abstract base comes from `jax.eval_shape(model.init)`, shardings from the
family's partition rules (LoRA shardings derived from the base's), the optimiser state's from the
trainable tree's; then every array is created by a jit whose `out_shardings` put it in place.
Nothing is built on one device and moved.

The optimiser only ever sees the trainable tree, so its state holds moments for the LoRA factors
(or, with `training.type = 'full'`, for the whole model) and for nothing else.
"""

import dataclasses
from typing import Any

import flax.struct
import jax
from absl import logging
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lora_jax import lora
from lora_jax import quant
from lora_jax.interop import flax_weights
from lora_jax.lora.adapter_file import AdapterRecord
from lora_jax.train import mesh as mesh_lib
from lora_jax.train import optimizer as optimizer_lib
from lora_jax.train import precision
from lora_jax.train.config import TrainConfig
from lora_jax.train.family import Family
from lora_jax.train.step import StepConfig

# Streams folded out of the seed's key, so adding a consumer never shifts another's randomness.
BASE_INIT, LORA_INIT, TRAIN, RELORA = 0, 1, 2, 3


@flax.struct.dataclass
class TrainState:
  """Everything a train step changes; donated to the step."""

  step: jax.Array  # int32: train steps taken (batches consumed), skipped ones included
  params: Any  # the trainable tree: LoRA factors, or the whole model
  opt_state: Any
  rng: jax.Array  # uint32[2] key data; the step's key is fold_in(rng, step)
  loss_scale: precision.LossScale
  skipped: jax.Array  # int32: non-finite steps skipped in the whole run
  skipped_in_a_row: jax.Array  # int32


@flax.struct.dataclass
class Frozen:
  """Everything a train step reads and never changes; never donated."""

  base: Any  # the base parameters; None when the base itself trains
  scales: Any  # the trained adapter's per-module scales (data, so a new alpha never recompiles)
  parents: tuple  # frozen parent `lora.Adapter`s, applied at weight 1 without dropout


@dataclasses.dataclass(frozen=True)
class Setup:
  """A run's initial arrays, their shardings and the step's static configuration."""

  mesh: Mesh
  state: TrainState
  frozen: Frozen
  state_shardings: TrainState
  frozen_shardings: Frozen
  step_config: StepConfig
  targets: tuple  # the trained adapter's `lora.Target`s; () in full fine-tuning
  base_fingerprint: str
  parent: AdapterRecord | None

  def abstract_state(self) -> TrainState:
    """Shapes, dtypes and shardings of the train state: the target of a checkpoint restore."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        self.state, self.state_shardings)


def root_key(seed: int) -> jax.Array:
  """uint32[2] key data of the run's seed."""
  return jax.random.key_data(jax.random.key(seed))


def abstract_base(family: Family) -> Any:
  """The base parameter tree's shapes and dtypes, from the family's batch spec."""
  def init(key):
    return family.model.init(key, *family.init_args(), deterministic=True)["params"]
  return jax.eval_shape(init, jax.random.key(0))


def _cast(tree: Any, dtype: str) -> Any:
  dtype = jnp.dtype(dtype)
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                      tree)


def base_params(config: TrainConfig, family: Family, abstract: Any, shardings: Any,
                dtype: str) -> tuple[Any, str]:
  """The base in place and stored as `dtype`, and the fingerprint of the base as given.

  The base comes from `training.base_params` or is initialised from the seed. The fingerprint is
  taken before the storage cast, so an adapter trained over a bfloat16-stored base still names
  the base it was trained on. With `training.quantize` the dense kernels are quantised from the
  float base on the host (the same codes on any mesh, at every start: the quantised base is
  checkpointed only by ReLoRA, which changes it) and `shardings` are the float base's, from
  which the quantised ones follow.
  """
  kind = config.training.quantize
  if config.training.base_params:
    host = flax_weights.load_params(config.training.base_params, abstract)
    if kind:
      return (jax.device_put(quant.quantize_tree(host, kind, dtype),
                             quant.shardings(abstract, shardings, kind)), lora.fingerprint(host))
    return jax.device_put(_cast(host, dtype), shardings), lora.fingerprint(host)

  def init(key):
    return family.model.init(jax.random.fold_in(jax.random.wrap_key_data(key), BASE_INIT),
                             *family.init_args(), deterministic=True)["params"]

  params = jax.jit(init, out_shardings=shardings)(root_key(config.training.seed))
  fingerprint = lora.fingerprint(params)
  if kind:
    host = host_params(params)
    del params
    return (jax.device_put(quant.quantize_tree(host, kind, dtype),
                           quant.shardings(abstract, shardings, kind)), fingerprint)
  if all(x.dtype == jnp.dtype(dtype) for x in jax.tree.leaves(params)):
    return params, fingerprint
  return jax.jit(lambda p: _cast(p, dtype), out_shardings=shardings, donate_argnums=0)(
      params), fingerprint


def _parent(config: TrainConfig, family: Family, abstract: Any, base_shardings: Any,
            fingerprint: str) -> tuple[AdapterRecord | None, Any, Any]:
  """The frozen parent adapter (record, Adapter in place, its shardings), or Nones."""
  if not config.training.parent_adapter:
    return None, None, None
  record = lora.load_adapter(config.training.parent_adapter, abstract)
  lora.check_adapter(abstract, record, base_fingerprint=fingerprint, model_family=family.name)
  targets = lora.resolve(record.spec, abstract)
  wanted = {t.keys for t in targets}
  got = set(record.adapter.modules())
  if wanted != got:
    raise lora.IncompatibleAdapterError(
        f"parent {config.training.parent_adapter} holds {len(got)} modules but its spec selects "
        f"{len(wanted)} in this base")
  shard = lora.shardings(targets, base_shardings)
  scale_shard = jax.tree.map(lambda _: mesh_lib.replicated(_mesh_of(base_shardings)),
                             record.adapter.scales)
  adapter = lora.Adapter(jax.device_put(record.adapter.params, shard),
                         jax.device_put(record.adapter.scales, scale_shard))
  return record, adapter, lora.Adapter(shard, scale_shard)


def _initial_adapter(config: TrainConfig, family: Family, abstract: Any, targets: tuple,
                     fingerprint: str) -> Any:
  """The factors (and DoRA magnitudes) of `training.init_adapter` on the host, or None.

  The file must adapt exactly the modules `config.lora` selects, at the same ranks: the run
  continues that adapter under this config's scales."""
  path = config.training.init_adapter
  if not path:
    return None
  record = lora.load_adapter(path, abstract)
  # An imported file (LoRAW records no base) has no fingerprint to compare; shapes still must fit.
  lora.check_adapter(abstract, record, model_family=family.name,
                     base_fingerprint=fingerprint if record.base_fingerprint else None)
  wanted = {t.keys: t for t in targets}
  got = record.adapter.modules()
  if set(wanted) != set(got):
    extra = sorted(".".join(k) for k in set(got) - set(wanted))
    lacking = sorted(".".join(k) for k in set(wanted) - set(got))
    raise lora.IncompatibleAdapterError(
        f"training.init_adapter {path} adapts {len(got)} modules, config.lora selects "
        f"{len(wanted)} (only in the file: {extra[:3]}; only selected: {lacking[:3]})")
  for keys, (a, _, _) in got.items():
    if a.shape[1] != wanted[keys].rank:
      raise lora.IncompatibleAdapterError(
          f"training.init_adapter {path}: {wanted[keys].path} has rank {a.shape[1]}, "
          f"config.lora gives it rank {wanted[keys].rank}")
  if bool(record.adapter.magnitudes()) != bool(config.lora.use_dora):
    raise lora.IncompatibleAdapterError(
        f"training.init_adapter {path} is {'DoRA' if record.adapter.magnitudes() else 'plain'}"
        f" LoRA, config.lora.use_dora is {config.lora.use_dora}")
  return jax.tree.map(np.asarray, record.adapter.params)


def _mesh_of(shardings: Any) -> Mesh:
  return jax.tree.leaves(shardings)[0].mesh


def setup(config: TrainConfig, family: Family, mesh: Mesh) -> Setup:
  """The run's initial state and frozen arrays, in place on `mesh`."""
  pol = precision.policy(config.training.precision, config.training.base_dtype)
  trains_base = config.training.type == "full"
  abstract = abstract_base(family)
  base_sh = mesh_lib.param_shardings(family.partition_rules, abstract, mesh)
  if config.training.quantize:
    logging.info(quant.describe(abstract, config.training.quantize, pol.base_dtype))
  base, fingerprint = base_params(config, family, abstract, base_sh,
                                  pol.param_dtype if trains_base else pol.base_dtype)
  rep = mesh_lib.replicated(mesh)

  if trains_base:
    targets, abstract_trainable, trainable_sh = (), abstract, base_sh
    parent, parent_adapter, parent_sh = None, None, None
  else:
    targets = lora.resolve(config.lora, abstract)
    abstract_trainable = lora.abstract_params(targets, jnp.dtype(pol.param_dtype))
    trainable_sh = lora.shardings(targets, base_sh)
    parent, parent_adapter, parent_sh = _parent(config, family, abstract, base_sh, fingerprint)

  tx, sched = optimizer_lib.optimizer(config.opt, config.training.steps, abstract_trainable)
  abstract_opt = jax.eval_shape(tx.init, abstract_trainable)
  opt_sh = mesh_lib.like_params(abstract_opt, abstract_trainable, trainable_sh, mesh)
  state_sh = TrainState(rep, trainable_sh, opt_sh, rep, precision.LossScale(rep, rep), rep, rep)

  spec = config.lora

  initial = (None if trains_base
             else _initial_adapter(config, family, abstract, targets, fingerprint))

  def init_state(key, base_or_none, start=None):
    if trains_base:
      params = base_or_none
    else:
      lora_key = jax.random.fold_in(jax.random.wrap_key_data(key), LORA_INIT)
      # DoRA's magnitudes are the norms of the kernels the forward computes with: dequantised.
      if start is not None:  # continuing an adapter: the file's values
        params = jax.tree.map(lambda v: v.astype(pol.param_dtype), start)
      else:
        params = lora.init_params(targets, spec, lora_key, jnp.dtype(pol.param_dtype),
                                  quant.dequantize_tree(base_or_none))
    train_key = jax.random.key_data(
        jax.random.fold_in(jax.random.wrap_key_data(key), TRAIN))
    zero = jnp.zeros((), jnp.int32)
    return TrainState(zero, params, tx.init(params), train_key,
                      precision.LossScale.create(pol.dynamic_loss_scale), zero, zero)

  key = root_key(config.training.seed)
  if trains_base:
    state = jax.jit(init_state, out_shardings=state_sh, donate_argnums=1)(key, base)
    frozen = Frozen(None, None, ())
    frozen_sh = Frozen(None, None, ())
  else:
    if spec.use_dora and initial is None:  # magnitudes start at the base kernels' column norms
      state = jax.jit(init_state, out_shardings=state_sh)(key, base)
    else:
      state = jax.jit(init_state, static_argnums=1, out_shardings=state_sh)(key, None, initial)
    scales = jax.device_put(lora.scales_of(targets),
                            jax.tree.map(lambda _: rep, lora.scales_of(targets)))
    parents = (parent_adapter,) if parent_adapter is not None else ()
    frozen = Frozen(base, scales, parents)
    frozen_base_sh = (quant.shardings(abstract, base_sh, config.training.quantize)
                      if config.training.quantize else base_sh)
    frozen_sh = Frozen(frozen_base_sh, jax.tree.map(lambda _: rep, scales),
                       (parent_sh,) if parent_sh is not None else ())

  step_config = StepConfig(
      family=family, tx=tx, schedule=sched, dynamic_loss_scale=pol.dynamic_loss_scale,
      trains_base=trains_base, lora_dropout=spec.dropout, lora_module_dropout=spec.module_dropout,
      relora_every=config.training.relora_every, relora_warmup=config.training.relora_warmup)
  return Setup(mesh, state, frozen, state_sh, frozen_sh, step_config, targets, fingerprint, parent)


def host_params(tree: Any) -> Any:
  """A tree of device arrays as numpy arrays on the host.

  With several processes (a TPU pod, a multi-host GPU job) every process must call this: arrays
  sharded across processes are gathered with a collective, and each process gets the whole tree.
  """
  if jax.process_count() > 1:
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
  return jax.tree.map(np.asarray, jax.device_get(tree))
