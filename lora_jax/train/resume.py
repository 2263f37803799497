"""Which checkpoint a run resumes from, and whether its settings allow it.

- The newest checkpoint that restores whole. One that does not (a file inside it deleted or
  truncated: Orbax renames a checkpoint into place only once written, so this is damage after the
  fact) is moved aside to `<workdir>/corrupt_checkpoints/` with a warning, never deleted, and the
  one before it is tried; with none left the run starts afresh, and says so.
- The checkpoint's recorded config must equal this run's in every field that alters the trained
  result. `FREE` lists the fields that may change: how long the run goes on (`training.steps` and
  `opt.warmup_steps`, which the hierarchy derives from it; a new length re-times the learning-rate
  schedule from the resume step), how often it evaluates, logs and checkpoints, what it keeps and
  exports, when it gives up, the device mesh and the eval batch that must divide it (the same
  training laid out on other devices: resuming on another slice), and the base's path (its
  content is checked by fingerprint), and the adapter a run started from (`training.init_adapter`:
  a resumed run continues from its checkpoint, not from that file). Any other difference is an error naming each field with
  both values, unless `training.allow_changed_config` is set, when the differences are logged
  instead; except `FIXED` ones (family, model, LoRA spec, training type, parent adapter), which
  shape or own the checkpoint's arrays and never change.
"""

import json
import os
from typing import Any

from absl import logging
from jax.experimental import multihost_utils

from lora_jax.train import checkpoint

FREE = frozenset({
    "training.steps", "opt.warmup_steps", "data.eval_batch_size", "training.eval_every", "training.log_every", "training.patience",
    "training.max_nonfinite_in_a_row", "training.allow_changed_config",
    "ckpt.every_steps", "ckpt.keep_last", "ckpt.keep_best", "ckpt.export",
    "mesh.data", "mesh.fsdp", "mesh.model", "training.base_params", "training.init_adapter",
})
# Fields added after checkpoints were written, with the value that trains as those runs did: a
# checkpoint that does not record one resumes when the run has that value.
ABSENT_AS = {"opt.inv_gamma": 1.0, "opt.inv_power": 1.0, "opt.inv_warmup": 0.0,
             "opt.ema_beta": 0.0, "opt.ema_power": 0.75, "model.positions": "learned"}
FIXED = ("family", "model.", "lora.", "training.type", "training.parent_adapter")
CORRUPT_DIR = "corrupt_checkpoints"


class ChangedConfigError(ValueError):
  """A resume whose settings differ from the checkpoint's in a field that alters the result."""


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def changed_fields(saved_config: str, config: str) -> dict[str, tuple[Any, Any]]:
  """{dotted field: (checkpoint's value, this run's)} of two `TrainConfig.to_json()` texts,
  less the FREE fields; a field only one side has shows `<absent>` on the other."""
  old, new = _flat(json.loads(saved_config)), _flat(json.loads(config))
  old = {**{k: v for k, v in ABSENT_AS.items() if k in new}, **old}
  absent = "<absent>"
  return {k: (old.get(k, absent), new.get(k, absent)) for k in sorted(old.keys() | new.keys())
          if k not in FREE and old.get(k, absent) != new.get(k, absent)}


def check_config(saved_meta: dict, meta: dict, step: int, allow_changed: bool) -> None:
  """Raise ChangedConfigError unless checkpoint `step`'s config may continue as this run's."""
  changed = changed_fields(saved_meta["config"], meta["config"])
  if not changed:
    return
  listed = "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
  fixed = [k for k in changed if k.startswith(FIXED)]
  if allow_changed and fixed:
    raise ChangedConfigError(f"checkpoint {step} was written with other settings: {listed}; "
                             f"{', '.join(fixed)} cannot change on resume, even with "
                             f"allow_changed_config: use a fresh workdir")
  if allow_changed:
    logging.warning("resuming checkpoint %d with changed settings (allow_changed_config): %s",
                    step, listed)
    return
  raise ChangedConfigError(
      f"checkpoint {step} was written with other settings: {listed}; rerun with the checkpoint's "
      f"values, set --config.training.allow_changed_config=True to resume anyway, or use a "
      f"fresh workdir")


def restore(ckpts: checkpoint.Checkpoints, abstract_state: Any, meta: dict, allow_changed: bool,
            primary: bool) -> tuple[Any, checkpoint.LoopState, int] | None:
  """(state, loop state, step) of the newest checkpoint that restores whole and may resume this
  run; None for a fresh start. Damaged ones are moved aside (see the module docstring)."""
  set_aside = []
  for step in sorted(ckpts.manager.all_steps(), reverse=True):
    try:
      saved = ckpts.metadata(step)
    except Exception as e:  # pylint: disable=broad-except; Orbax/TensorStore raise many kinds
      set_aside.append(_set_aside(ckpts, step, e, primary))
      continue
    check_config(saved, meta, step, allow_changed)  # a different run, not damage: an error
    checkpoint.check_resumable(saved, meta)
    try:
      state, loop_state, _ = ckpts.restore(step, abstract_state)
    except Exception as e:  # pylint: disable=broad-except
      set_aside.append(_set_aside(ckpts, step, e, primary))
      continue
    if set_aside:
      logging.warning("resuming from step %d, the newest complete checkpoint", step)
    return state, loop_state, step
  if set_aside:
    logging.warning("no complete checkpoint left in %s: starting afresh from step 0",
                    ckpts.directory)
  return None


def _set_aside(ckpts: checkpoint.Checkpoints, step: int, error: Exception, primary: bool) -> str:
  """Move damaged checkpoint `step` out of Orbax's sight, keeping it for inspection."""
  folder = os.path.join(os.path.dirname(ckpts.directory), CORRUPT_DIR)
  target = os.path.join(folder, str(step))
  suffix = 1
  while os.path.exists(target):
    target, suffix = os.path.join(folder, f"{step}.{suffix}"), suffix + 1
  reason = str(error).splitlines()[0] if str(error) else ""
  logging.warning("checkpoint %d does not restore (%s: %s); moved to %s", step,
                  type(error).__name__, reason[:300], target)
  if primary:
    os.makedirs(folder, exist_ok=True)
    os.rename(os.path.join(ckpts.directory, str(step)), target)
  # Every process sees the same files; they continue together once the step is gone.
  multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
  ckpts.manager.reload()
  return target
