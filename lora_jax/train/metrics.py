"""What a run tells the world: a CSV row and TensorBoard scalars per logging step, a console line,
and `status.json`, rewritten atomically so another process (a UI, a scheduler) can follow along.

CSV columns are fixed when the run starts: `step, epoch, train_loss, val_loss, lr`, then the
family's metrics as `train_<name>` and `val_<name>`, then `grad_norm, skipped, loss_scale,
steps_per_s`. A validation column is empty on rows without an evaluation. On resume, rows past
the checkpoint's step (written before an interruption) are dropped, so the file reads as one run;
a run resumed from nothing starts the file again.
"""

import csv
import datetime
import io
import json
import logging as py_logging
import math
import os
import sys
import time
import traceback

import numpy as np
from absl import logging

from lora_jax import atomic, disk_errors

FIXED = ("step", "epoch", "train_loss", "val_loss", "lr")
TRAILING = ("grad_norm", "skipped", "loss_scale", "steps_per_s")


def columns(family_metrics: list[str]) -> list[str]:
  """The CSV header for a family with these metric names."""
  return (list(FIXED) + [f"train_{m}" for m in family_metrics]
          + [f"val_{m}" for m in family_metrics] + list(TRAILING))


def _cell(value) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return repr(value)
  return str(value)


class MetricsWriter:
  """CSV + TensorBoard + console for one run (appending when it resumes)."""

  def __init__(self, workdir: str, header: list[str], resume_step: int,
               tensorboard: str = "tensorboard"):
    self.path = os.path.join(workdir, "metrics.csv")
    self.header = header
    if os.path.exists(self.path):
      with open(self.path, newline="") as f:
        rows = list(csv.reader(f))
      if rows and rows[0] != header:
        raise ValueError(f"{self.path} has columns {rows[0]}, this run writes {header}; "
                         f"use a fresh workdir")
      # Rows of the steps the restored state has done; at step 0 none, as the loop writes the
      # baseline row again (a run killed before its first checkpoint left one behind).
      # A row cut short by a full disk is dropped with the rest past the checkpoint.
      kept = ([r for r in rows[1:] if len(r) == len(header) and int(r[0]) <= resume_step]
              if resume_step > 0 else [])
      buffer = io.StringIO()
      csv.writer(buffer).writerows([header] + kept)
      atomic.write_text(self.path, buffer.getvalue())
    else:
      atomic.write_text(self.path, ",".join(header) + "\n")
    # Imported here: tensorboardX imports torch (seconds), which a launcher refusing its flags
    # should not wait for.
    import tensorboardX  # pylint: disable=g-import-not-at-top
    self.tb = tensorboardX.SummaryWriter(os.path.join(workdir, tensorboard))

  def row(self, values: dict) -> None:
    """Append one row (keys from the header; missing ones empty) and its TensorBoard scalars."""
    unknown = sorted(set(values) - set(self.header))
    if unknown:
      raise ValueError(f"metrics {unknown} are not CSV columns {self.header}")
    with open(self.path, "a", newline="") as f:
      csv.writer(f).writerow([_cell(values.get(k)) for k in self.header])
    step = values["step"]
    for k, v in values.items():
      if k not in ("step", "epoch") and v is not None:
        split, _, name = k.partition("_") if k.startswith(("train_", "val_")) else ("", "", k)
        self.tb.add_scalar(f"{split}/{name}" if split else k, v, step)
    self.tb.flush()

  def close(self) -> None:
    try:
      self.tb.close()
    except OSError:
      # The events could not be flushed (a full disk): give them up. Stop the writer thread and
      # mark the writers closed, or the thread and tensorboardX's exit hook each print a
      # traceback after the run's error line. pylint: disable=protected-access
      for writer in (self.tb.all_writers or {}).values():
        events = writer.event_writer
        if not events._closed and events._worker is not None:
          events._worker.stop()
        events._closed = True
      raise


class Progress:
  """The rows, console lines and status of one run, fed each step's metrics on the host.

  Train columns are means over the finite steps since the last row; `lr`, `skipped` and
  `loss_scale` are the latest step's.
  """

  def __init__(self, workdir: str, family_metrics: list[str], total_steps: int, start_step: int,
               primary: bool = True, tensorboard: str = "tensorboard"):
    self.workdir = workdir
    self.family_metrics = family_metrics
    self.total = total_steps
    # Only one process of a multi-process run writes rows, console lines and the status file.
    self.primary = primary
    self.writer = (MetricsWriter(workdir, columns(family_metrics), start_step, tensorboard)
                   if primary else None)
    self.window: list[dict] = []
    self.last_time, self.last_step, self.rate = time.time(), start_step, 0.0
    self.first_step: tuple[float, int] | None = None  # (time, step) the first step was read back
    self.train_loss: float | None = None

  def baseline(self, val: dict) -> None:
    """Row 0: the untrained model's validation metrics."""
    if not self.primary:
      return
    self.writer.row({"step": 0, "epoch": 0, "val_loss": val["loss"],
                     **{f"val_{k}": val[k] for k in self.family_metrics}})
    logging.info("step 0 val %.4f (before training)", val["loss"])

  def add(self, step: int, epoch: int, metrics: dict, val: dict | None, log: bool) -> bool:
    """Take one step's metrics; write a row (and a console line) when due. True if written."""
    self.window.append(metrics)
    now = time.time()
    if self.first_step is None:  # it ran compilation: speed and ETA count from its end
      self.first_step = (now, step)
    if not (log or val is not None) or not self.primary:
      return False
    since, since_step = (self.last_time, self.last_step) if self.last_step >= self.first_step[1] \
        else self.first_step
    self.rate = (step - since_step) / max(now - since, 1e-9)
    self.last_time, self.last_step = now, step
    finite = [w for w in self.window if w["finite"]]
    mean = lambda k: float(np.mean([w[k] for w in finite])) if finite else float("nan")
    row = {"step": step, "epoch": epoch, "train_loss": mean("loss"), "lr": metrics["lr"],
           "grad_norm": mean("grad_norm"), "skipped": metrics["skipped"],
           "loss_scale": metrics["loss_scale"], "steps_per_s": self.rate}
    row.update({f"train_{k}": mean(k) for k in self.family_metrics})
    if val is not None:
      row["val_loss"] = val["loss"]
      row.update({f"val_{k}": val[k] for k in self.family_metrics})
    self.writer.row(row)
    self.train_loss = row["train_loss"]
    console(step, self.total, epoch, row["train_loss"], metrics["lr"], self.rate,
            val["loss"] if val is not None else None)
    self.window.clear()
    return True

  def status(self, state: str, step: int, epoch: int, val_loss: float | None,
             best_val_loss: float | None, **extra) -> None:
    if not self.primary:
      return
    eta = (self.total - step) / self.rate if self.rate > 0 else None
    write_status(self.workdir, state=state, step=step, total_steps=self.total, epoch=epoch,
                 train_loss=self.train_loss, val_loss=val_loss, best_val_loss=best_val_loss,
                 steps_per_s=self.rate, eta_s=eta, **extra)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def console(step: int, total: int, epoch: int, loss: float, lr: float, steps_per_s: float,
            val_loss: float | None = None) -> None:
  """One log line: step, epoch, loss, learning rate, speed and time left."""
  left = (total - step) / steps_per_s if steps_per_s > 0 else math.inf
  left_text = str(datetime.timedelta(seconds=round(left))) if math.isfinite(left) else "?"
  val = f" val {val_loss:.4f}" if val_loss is not None else ""
  logging.info("step %d/%d epoch %d loss %.4f%s lr %.3g %.2f steps/s %s left", step, total, epoch,
               loss, val, lr, steps_per_s, left_text)


def write_status(workdir: str, **fields) -> None:
  """Rewrite `status.json` atomically with `fields` and the time."""
  fields["updated"] = time.time()
  clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
           for k, v in fields.items()}
  atomic.write_text(os.path.join(workdir, "status.json"), json.dumps(clean, sort_keys=True) + "\n")


class _OrbaxInfoFilter(py_logging.Filter):
  """Drops Orbax's per-save INFO chatter (dozens of lines a checkpoint), its warning that a
  checkpoint came without metrics (periodic ones have no validation loss, by design), and the
  tracebacks its writer threads log when the disk refuses a write: that error reaches the loop,
  which reports it as one line (`disk_errors`)."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if "/orbax/" not in record.pathname:
      return True
    if record.exc_info and disk_errors.describe(record.exc_info[1]) is not None:
      return False
    if record.levelno == py_logging.WARNING:
      return not str(record.msg).startswith("Requested `tracked_metric`")
    return record.levelno > py_logging.WARNING


class _DiskErrorFilter(py_logging.Filter):
  """Drops asyncio's 'Task exception was never retrieved' for Orbax's writer tasks that the disk
  refused: the loop reports that error as one line."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return not (record.exc_info and disk_errors.describe(record.exc_info[1]) is not None)


def _closed_loop_callback(kind, value, tb) -> bool:
  """Whether an uncaught error is tensorstore failing to hand a finished write back to an event
  loop that Orbax already closed, after an earlier write failed (and was reported)."""
  frames = traceback.extract_tb(tb)
  return (kind is RuntimeError and str(value) == "Event loop is closed" and bool(frames)
          and frames[0].name == "call_soon_threadsafe")


def _quiet_unraisablehook(hook):
  def unraisablehook(unraisable):
    if not _closed_loop_callback(unraisable.exc_type, unraisable.exc_value,
                                 unraisable.exc_traceback):
      hook(unraisable)
  unraisablehook.quiet_orbax = True
  return unraisablehook


def quiet_orbax() -> None:
  """Install the Orbax filters on absl's and asyncio's loggers and on `sys.unraisablehook`
  (which tensorstore's callbacks report through), once."""
  for name, kind in (("absl", _OrbaxInfoFilter), ("asyncio", _DiskErrorFilter)):
    logger = py_logging.getLogger(name)
    if not any(isinstance(f, kind) for f in logger.filters):
      logger.addFilter(kind())
  if not getattr(sys.unraisablehook, "quiet_orbax", False):
    sys.unraisablehook = _quiet_unraisablehook(sys.unraisablehook)
