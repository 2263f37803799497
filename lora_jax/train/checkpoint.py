"""Checkpoints of a run through Orbax's `CheckpointManager`: resumable, atomic, pruned.

Each step directory holds three items:
  state  the `TrainState` (trainable params, optimiser state, step, RNG key, loss scale, skip
         counters); never the frozen base, which is rebuilt (and fingerprinted) on resume.
  loop   JSON: the data iterator position and the early-stopping bookkeeping.
  meta   JSON: family, LoRA spec, base fingerprint, parent adapter and the whole config.
  base   only in a run whose frozen base changes (ReLoRA folds adapters into it): the base.
Orbax writes into a temporary directory and renames it when complete, so a checkpoint is either
whole or absent. The last `keep_last` survive, and the `keep_best` with the lowest validation loss.
A state with a non-finite parameter is never written.
"""

import dataclasses
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from lora_jax import errors
from lora_jax.train import precision
from lora_jax.train.batches import Position
from lora_jax.train.config import CkptConfig


_all_finite = jax.jit(precision.all_finite)


class NonFiniteStateError(errors.UserError, RuntimeError):
  """A checkpoint was asked of a state holding NaN or infinity."""


@dataclasses.dataclass(frozen=True)
class LoopState:
  """The loop's own resumable state besides the arrays."""

  position: Position
  best_val_loss: float | None
  evals_without_improvement: int

  def to_json(self) -> dict:
    return {"epoch": self.position.epoch, "index": self.position.index,
            "best_val_loss": self.best_val_loss,
            "evals_without_improvement": self.evals_without_improvement}

  @classmethod
  def from_json(cls, d: dict) -> "LoopState":
    return cls(Position(d["epoch"], d["index"]), d["best_val_loss"],
               d["evals_without_improvement"])


class Checkpoints:
  """The run's checkpoint directory."""

  def __init__(self, directory: str, config: CkptConfig):
    self.directory = os.path.abspath(directory)
    preservation = [policies.LatestN(n=config.keep_last)]
    if config.keep_best > 0:
      preservation.append(policies.BestN(
          get_metric_fn=lambda m: m["val_loss"], reverse=True,  # reverse: lower is better
          n=config.keep_best, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        create=True,
        # A write killed midway leaves `<step>.orbax-checkpoint-tmp`: never restored, and removed
        # when the next run opens the directory (one run at a time holds it: workdir_lock).
        cleanup_tmp_directories=True,
        # best_fn makes Orbax write each checkpoint's metrics to disk (so the best is still known
        # after a resume) and answers best_step(); which steps survive is the policy's business.
        best_fn=lambda m: m["val_loss"], best_mode="min",
        preservation_policy=policies.AnyPreservationPolicy(preservation),
        # A step directory that cannot be made (read-only, full disk) fails save() itself; made
        # in the background, the failure left Orbax's threads waiting ~6 minutes at exit.
        async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "loop", "meta", "base"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def save(self, step: int, state: Any, loop: LoopState, meta: dict,
           val_loss: float | None = None, base: Any = None) -> bool:
    """Write step `step` (asynchronously); False when it exists already. `base`: a frozen base
    that changes during training (ReLoRA), saved beside the state."""
    if step in self.manager.all_steps():
      return False
    if not bool(_all_finite((state.params, state.opt_state, base))):
      raise NonFiniteStateError(f"refusing to checkpoint step {step}: the trainable state holds "
                                f"NaN or infinity")
    metrics = {"val_loss": float(val_loss)} if val_loss is not None else None
    items = dict(state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop.to_json()),
                 meta=ocp.args.JsonSave(meta))
    if base is not None:
      items["base"] = ocp.args.StandardSave(base)
    return self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics,
                             force=True)  # the loop decides when

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, LoopState, dict]:
    """The state (placed as `abstract_state`'s shardings say), loop state and metadata."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        loop=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    return restored.state, LoopState.from_json(restored.loop), restored.meta

  def restore_base(self, step: int, abstract_base: Any) -> Any:
    """The base saved with step `step` (placed as `abstract_base`'s shardings say)."""
    return self.manager.restore(step, args=ocp.args.Composite(
        base=ocp.args.StandardRestore(abstract_base))).base

  def metadata(self, step: int) -> dict:
    """The `meta` item of step `step` alone (checked before the state is restored)."""
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def check_resumable(saved: dict, current: dict) -> None:
  """Raise unless a checkpoint's metadata belongs to this run's family, base and adapter shape."""
  for key in ("family", "base_fingerprint", "lora_spec", "training_type", "parent_adapter",
              "relora_every"):
    if saved.get(key) != current.get(key):
      raise ValueError(f"checkpoint was written with {key} {saved.get(key)!r}, this run has "
                       f"{current.get(key)!r}; use a fresh workdir")

