"""The one training loop every model family shares, read top to bottom in `_train`.

First the settings are checked against the model and the data, writing nothing (`_prepare`);
then the workdir is locked (`workdir_lock`: a second run into it is refused), then the newest
complete checkpoint whose settings match is restored (`resume`), if any. Before the first step the
untrained model is evaluated (row 0 of the CSV: the bar to beat). Per step: draw a batch, dispatch
the jitted train step, then read back the previous step's metrics, so the host never waits for the
device it just fed. Every `eval_every` steps and at each epoch end: evaluate, track the best
validation loss, checkpoint with it, and stop early after `patience` evaluations in a row without a
better one. SIGTERM/SIGINT (from the moment `train` holds the lock) finish the step, checkpoint and
return `stopped`. Too many non-finite steps in a row fail the run before anything of that state is
checkpointed. At the end the trained adapter (`adapter.lora`) or model (`params.safetensors`,
also after ReLoRA: `lora_jax.train.relora`) is exported into the workdir: the parameters of the
checkpoint with the lowest validation loss (`ckpt.export = 'best'`, the default: after early
stopping or overfitting the last step is not the best) or the last step's (`'final'`).
"""

import contextlib
import dataclasses
import os
from typing import Any, Sequence

import jax
import numpy as np
from absl import logging

from lora_jax import disk_errors, errors, families, lora
from lora_jax.interop import flax_weights
from lora_jax.train import batches
from lora_jax.train import checkpoint
from lora_jax.train import mesh as mesh_lib
from lora_jax.train import optimizer as optimizer_lib
from lora_jax.train import metrics as metrics_lib
from lora_jax.train import precision
from lora_jax.train import preemption
from lora_jax.train import relora
from lora_jax.train import resume
from lora_jax.train import state as state_lib
from lora_jax.train import step as step_lib
from lora_jax.train import workdir_lock
from lora_jax.train.config import TrainConfig

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class NonFiniteError(errors.UserError, RuntimeError):
  """Too many train steps in a row had a non-finite loss or gradient."""


@dataclasses.dataclass(frozen=True)
class Result:
  """How a call to `train` ended."""

  status: str  # 'finished', 'early_stopped' or 'stopped' (a signal or `stop_after`)
  step: int
  val_loss: float | None  # the last evaluation's
  best_val_loss: float | None
  params: Any  # the trainable tree, on the host
  export_path: str  # '' unless the run finished
  export_step: int | None  # the step whose parameters were exported
  compiles: dict[str, int]  # backend compilations of train_step and eval_step in this call


@dataclasses.dataclass
class _Record:
  """A dispatched step whose metrics are still on the device."""

  step: int
  epoch: int
  metrics: dict
  val: dict | None  # host metrics of an evaluation after this step
  log: bool


class _CompileCounter:
  """Counts XLA compilations per function name while open (jax.monitoring events)."""

  def __init__(self):
    self.counts: dict[str, int] = {}

  def _listen(self, event: str, duration: float, **kwargs) -> None:
    del duration
    if event == COMPILE_EVENT:
      name = str(kwargs.get("fun_name", ""))
      self.counts[name] = self.counts.get(name, 0) + 1

  def __enter__(self) -> "_CompileCounter":
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def __exit__(self, *exc) -> None:
    jax.monitoring.unregister_event_duration_listener(self._listen)

  def of(self, name: str) -> int:
    return self.counts.get(f"jit({name})", 0)


def metadata(config: TrainConfig, family_name: str, fingerprint: str) -> dict:
  """What a checkpoint records about the run it belongs to."""
  return {"family": family_name, "base_fingerprint": fingerprint,
          "lora_spec": config.lora.to_json() if config.training.type == "lora" else None,
          "training_type": config.training.type,
          "parent_adapter": config.training.parent_adapter,
          "config": config.to_json(),
          # Only when on, so checkpoints from before ReLoRA existed still resume.
          **({"relora_every": config.training.relora_every} if config.training.relora_every
             else {})}


def _evaluate(eval_fn, params, frozen, val_batches: list[dict], sharding) -> dict[str, float]:
  """Mean of the eval step's metrics over the validation batches (all dispatched, then read)."""
  outs = [eval_fn(params, frozen, jax.device_put(b, sharding), i)
          for i, b in enumerate(val_batches)]
  host = jax.device_get(outs)
  return {k: float(np.mean([o[k] for o in host])) for k in host[0]}


def is_primary() -> bool:
  """Whether this process writes the run's files: process 0 of a multi-process run, or the only
  one. Every process computes; collectives need them all."""
  return jax.process_index() == 0


def _export(workdir: str, config: TrainConfig, setup: state_lib.Setup, params: Any,
            family_name: str, step: int, export_step: int) -> str:
  if config.training.type == "full" or config.training.relora_every:  # `params`: the whole model
    path = os.path.join(workdir, "params.safetensors")
    if not is_primary():
      return path
    flax_weights.save_params(params, path, {**setup.step_config.family.weights_metadata,
                                            "model_family": family_name, "name": config.name,
                                            "base_fingerprint": setup.base_fingerprint})
    return path
  path = os.path.join(workdir, "adapter.lora")
  extra = {"steps": step, "export_step": export_step}
  if setup.parent is not None:
    extra.update(parent_adapter=config.training.parent_adapter, parent_name=setup.parent.name)
  scales = state_lib.host_params(setup.frozen.scales)
  if not is_primary():  # every process gathered (a collective); one writes
    return path
  lora.save_adapter(path, lora.AdapterRecord(lora.Adapter(params, scales), config.lora,
                                             setup.base_fingerprint, family_name, config.name,
                                             extra))
  return path


def train(config: TrainConfig, workdir: str, *, devices: Sequence[jax.Device] | None = None,
          stop_after: int | None = None, tensorboard: str = "tensorboard") -> Result:
  """Train (or resume training) as `config` says, writing everything under `workdir`.

  TensorBoard events go to `workdir/<tensorboard>` (a system whose users know another folder,
  such as the song model's `logs`, names it).

  `stop_after` stops after that many steps of this call, as a signal would: checkpointed and
  resumable (a time-sliced scheduler's hook, and how tests interrupt a run).

  Nothing is written before the settings and the data passed every check (`_prepare`). Where the
  workdir exists its lock is taken first, so a busy workdir is refused before any work; a new
  workdir is made, and locked, only once the checks passed, so a refused run leaves no folder.
  """
  metrics_lib.quiet_orbax()
  existed = os.path.isdir(workdir)
  with contextlib.ExitStack() as held:
    lock = lambda: held.enter_context(workdir_lock.WorkdirLock(workdir, jax.process_index()))
    if existed:
      lock()
    prepared = _prepare(config, devices)
    if not existed:
      os.makedirs(workdir, exist_ok=True)
      lock()
    compiles = held.enter_context(_CompileCounter())
    stop = held.enter_context(preemption.StopRequest())
    try:
      return _train(config, workdir, prepared, stop_after, stop, compiles, tensorboard)
    except BaseException as e:
      disk = disk_errors.describe(e)
      if is_primary():
        _record_failure(workdir, e, disk)
      if disk is not None:  # one line, not Orbax's traceback from a writer thread
        raise disk_errors.StorageError(
            f"{disk}; the run stopped and keeps its complete checkpoints: make room (or make "
            f"the folder writable) and run the same command again to resume") from e
      raise


def _record_failure(workdir: str, e: BaseException, disk: str | None) -> None:
  """status.json 'failed' and why; on a full or read-only disk that write may fail too, and the
  run's own error is the one to report."""
  try:
    metrics_lib.write_status(workdir, state="failed",
                             message=disk or f"{type(e).__name__}: {e}")
  except OSError as write_error:
    logging.warning("could not record the failure in status.json: %s", write_error)


def _check_batches(config: TrainConfig, mesh) -> None:
  accum = config.opt.grad_accum_steps
  if config.data.batch_size % accum:
    raise ValueError(f"data.batch_size {config.data.batch_size} is not divisible by "
                     f"opt.grad_accum_steps {accum}")
  mesh_lib.check_batch_size(config.data.batch_size // accum, mesh,
                            "micro-batch size (data.batch_size / opt.grad_accum_steps)")
  mesh_lib.check_batch_size(config.data.eval_batch_size, mesh, "data.eval_batch_size")


@dataclasses.dataclass(frozen=True)
class _Prepared:
  """What `_prepare` checked and built; nothing of it is on disk."""

  family: Any
  mesh: Any
  train_arrays: dict
  val_batches: list
  setup: state_lib.Setup


def _family_and_mesh(config: TrainConfig, devices):
  pol = precision.policy(config.training.precision, config.training.base_dtype)
  family = families.lookup(config.family).make(config.model, pol.compute_dtype)
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  _check_batches(config, mesh)
  return family, mesh


def check_data(config: TrainConfig, train_arrays: dict, val_arrays: dict,
               devices: Sequence[jax.Device] | None = None) -> None:
  """The checks `train` makes of the data, on arrays still in memory (batch sizes on the mesh,
  the arrays against the family, a full batch of each split): for a command that writes the data
  files `config.data` names only once the run would accept them."""
  family, _ = _family_and_mesh(config, devices)
  family.check_arrays(train_arrays, "the training windows")
  family.check_arrays(val_arrays, "the validation windows")
  batches.check_fills(train_arrays, config.data.batch_size)
  batches.eval_batches(val_arrays, config.data.eval_batch_size)


def _prepare(config: TrainConfig, devices) -> _Prepared:
  """Every check of the settings against the model and the data (ranks, batch sizes, token ids,
  a parent adapter), and the run's initial arrays; writes nothing."""
  family, mesh = _family_and_mesh(config, devices)
  logging.info("mesh %s over %d %s devices", dict(mesh.shape), mesh.size,
               mesh.devices.flat[0].platform)
  train_arrays, val_arrays = batches.load(config.data, family, config.training.seed)
  batches.check_fills(train_arrays, config.data.batch_size)
  val_batches = batches.eval_batches(val_arrays, config.data.eval_batch_size)
  return _Prepared(family, mesh, train_arrays, val_batches, state_lib.setup(config, family, mesh))


def _train(config: TrainConfig, workdir: str, prepared: _Prepared, stop_after: int | None,
           stop: preemption.StopRequest, compiles: _CompileCounter,
           tensorboard: str = "tensorboard") -> Result:
  tc, total, accum = config.training, config.training.steps, config.opt.grad_accum_steps
  family, mesh, setup = prepared.family, prepared.mesh, prepared.setup
  train_arrays, val_batches = prepared.train_arrays, prepared.val_batches
  if setup.targets:
    logging.info(lora.describe(setup.targets))
  meta = metadata(config, family.name, setup.base_fingerprint)
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"), config.ckpt)
  state, frozen = setup.state, setup.frozen
  reset = relora.jit_reset(config, setup) if tc.relora_every else None
  abstract_base = relora.abstract_base(setup) if reset else None
  loop_state = checkpoint.LoopState(batches.Position(0, 0), None, 0)
  restored = resume.restore(ckpts, setup.abstract_state(), meta, tc.allow_changed_config,
                            is_primary())
  if restored is not None:
    state, loop_state, resumed = restored
    if reset:  # the base the run had folded its adapters into by then
      frozen = frozen.replace(base=ckpts.restore_base(resumed, abstract_base))
      jax.tree.map(lambda x: x.delete(), setup.frozen.base)  # not two bases in memory
    logging.info("resumed from step %d at epoch %d batch %d", resumed,
                 loop_state.position.epoch, loop_state.position.index)

  train_fn = step_lib.jit_train_step(setup.step_config, mesh, setup.state_shardings,
                                     setup.frozen_shardings)
  eval_fn = step_lib.jit_eval_step(setup.step_config, mesh, setup.state_shardings.params,
                                   setup.frozen_shardings)
  train_sharding, eval_sharding = mesh_lib.batch_sharding(mesh, 1), mesh_lib.batch_sharding(mesh)
  evaluate = lambda params: _evaluate(eval_fn, params, frozen, val_batches, eval_sharding)
  family_metrics = sorted(k for k in jax.eval_shape(
      eval_fn, setup.abstract_state().params, frozen,
      family.abstract_batch(config.data.eval_batch_size)) if k != "loss")
  start = step = int(state.step)
  progress = metrics_lib.Progress(workdir, family_metrics, total, step,
                                  primary=is_primary(), tensorboard=tensorboard)
  iterator = batches.BatchIterator(train_arrays, config.data.batch_size, tc.seed,
                                   loop_state.position)
  best, bad_evals = loop_state.best_val_loss, loop_state.evals_without_improvement
  last_val: float | None = None
  status = lambda name, **extra: progress.status(name, step, iterator.position.epoch, last_val,
                                                 best, **extra)

  def finish(record: _Record) -> None:
    """Read a dispatched step's metrics; fail on too many non-finite steps in a row."""
    m = {k: v.item() for k, v in jax.device_get(record.metrics).items()}
    if m["skipped_in_a_row"] >= tc.max_nonfinite_in_a_row:
      raise NonFiniteError(
          f"{m['skipped_in_a_row']} steps in a row up to step {record.step} had a non-finite "
          f"loss or gradient (last loss {m['loss']}, loss scale {m['loss_scale']}, "
          f"training.max_nonfinite_in_a_row {tc.max_nonfinite_in_a_row}); stopping without a "
          f"checkpoint of this state")
    if progress.add(record.step, record.epoch, m, record.val, record.log):
      status("running")

  status("running")
  if step == 0:  # the untrained model: row 0, and the bar the first evaluation must beat
    baseline = evaluate(state.params)
    last_val = best = baseline["loss"]
    progress.baseline(baseline)
  ended = "finished"
  pending: _Record | None = None
  try:
    while step < total:
      batch, epoch, end_of_epoch = next(iterator)
      state, step_metrics = train_fn(
          state, frozen, jax.device_put(batches.micro_batches(batch, accum), train_sharding))
      step += 1
      if reset and step % tc.relora_every == 0:
        state, base = reset(state, frozen.base)
        frozen = frozen.replace(base=base)
      if pending is not None:  # step N is on its way: now read step N - 1
        finish(pending)
      pending = _Record(step, epoch, step_metrics, None, step % tc.log_every == 0 or step == total)
      if step % tc.eval_every == 0 or end_of_epoch or step == total:
        pending.val = evaluate(state.params)
        last_val = pending.val["loss"]
        if best is None or last_val < best:
          best, bad_evals = last_val, 0
        else:
          bad_evals += 1
      early = tc.patience > 0 and bad_evals >= tc.patience
      interrupted = stop.requested or (stop_after is not None and step - start >= stop_after)
      if (step % config.ckpt.every_steps == 0 or pending.val is not None or early or interrupted
          or step == total):
        finish(pending)  # a non-finite failure must surface before this state is saved
        ckpts.save(step, state, checkpoint.LoopState(iterator.position, best, bad_evals), meta,
                   val_loss=last_val if pending.val is not None else None,
                   base=frozen.base if reset else None)
        pending = None
      if interrupted:
        ended = "stopped"
        logging.info("stopping at step %d (%s); checkpoint written", step,
                     stop.signal_name or f"stop_after={stop_after}")
        break
      if early:
        ended = "early_stopped"
        logging.info("early stopping at step %d: %d evaluations without a validation loss below "
                     "%.4f", step, bad_evals, best)
        break
    if pending is not None:
      finish(pending)
    ckpts.wait()
    best_step = ckpts.best_step()
    export_step = None
    if ended != "stopped":
      export_step = best_step if config.ckpt.export == "best" and best_step is not None else step
      export_state, export_base = state, frozen.base
      if export_step != step:
        export_state = ckpts.restore(export_step, setup.abstract_state())[0]
        if reset:
          export_base = ckpts.restore_base(export_step, abstract_base)
      # With an EMA (opt.ema_beta) the average is what is exported, as stable-audio-tools does.
      export_params = (optimizer_lib.ema_of(export_state.opt_state) if config.opt.ema_beta
                       else export_state.params)
      if reset:  # the folded base with the last adapter: the whole of what the run learned
        export_params = relora.merged_model(export_base, (
            *frozen.parents, lora.Adapter(export_params, frozen.scales)))
  finally:  # in-flight saves complete, files close, also when the run fails
    try:
      ckpts.close()
    finally:
      progress.close()
  params = state_lib.host_params(state.params)
  export_path = ""
  if ended != "stopped":
    export_path = _export(workdir, config, setup, state_lib.host_params(export_params),
                          family.name, step, export_step)
    logging.info("exported %s (step %d of %d)", export_path, export_step, step)
  status(ended, best_step=best_step, export_path=export_path, export_step=export_step)
  return Result(ended, step, last_val, best, params, export_path, export_step,
                {"train_step": compiles.of("train_step"), "eval_step": compiles.of("eval_step")})
