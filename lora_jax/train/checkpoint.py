"""Checkpoints of a run through Orbax's `CheckpointManager`: resumable, atomic, pruned.

Each step directory holds three items:
  state  the `TrainState` (trainable params, optimiser state, step, RNG key, loss scale, skip
         counters); never the frozen base, which is rebuilt (and fingerprinted) on resume.
  loop   JSON: the data iterator position and the early-stopping bookkeeping.
  meta   JSON: family, LoRA spec, base fingerprint, parent adapter and the whole config.
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
        # best_fn makes Orbax write each checkpoint's metrics to disk (so the best is still known
        # after a resume) and answers best_step(); which steps survive is the policy's business.
        best_fn=lambda m: m["val_loss"], best_mode="min",
        preservation_policy=policies.AnyPreservationPolicy(preservation))
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "loop", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def save(self, step: int, state: Any, loop: LoopState, meta: dict,
           val_loss: float | None = None) -> bool:
    """Write step `step` (asynchronously); False when it exists already."""
    if step in self.manager.all_steps():
      return False
    if not bool(_all_finite((state.params, state.opt_state))):
      raise NonFiniteStateError(f"refusing to checkpoint step {step}: the trainable state holds "
                                f"NaN or infinity")
    metrics = {"val_loss": float(val_loss)} if val_loss is not None else None
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        loop=ocp.args.JsonSave(loop.to_json()),
        meta=ocp.args.JsonSave(meta)), metrics=metrics, force=True)  # the loop decides when

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, LoopState, dict]:
    """The state (placed as `abstract_state`'s shardings say), loop state and metadata."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        loop=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    return restored.state, LoopState.from_json(restored.loop), restored.meta

  def metadata(self, step: int) -> dict:
    """The `meta` item of step `step` alone (checked before the state is restored)."""
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def check_resumable(saved: dict, current: dict) -> None:
  """Raise unless a checkpoint's metadata belongs to this run's family, base and adapter shape."""
  for key in ("family", "base_fingerprint", "lora_spec", "training_type", "parent_adapter"):
    if saved.get(key) != current[key]:
      raise ValueError(f"checkpoint was written with {key} {saved.get(key)!r}, this run has "
                       f"{current[key]!r}; use a fresh workdir")

