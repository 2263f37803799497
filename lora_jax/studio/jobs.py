"""A training job: the project's own launcher, its command line, and what its run wrote.

A job is one run of `launch/train_parent_adapter.py` or `launch/train_child_adapter.py` over the
base model (a song job, level 'song', is song_jobs.py's), in `<root>/jobs/<id>/`. Its command line
is fixed when the job is made and stored; resuming runs it again, and the loop resumes from its last checkpoint in `run/`. Progress is what
the loop itself writes for other processes to follow: `run/status.json` (state, step, ETA) and
`run/metrics.csv` (one row per logged step, validation loss on evaluation rows).
"""

import csv
import json
import math
import os
import pathlib
import sys

from lora_jax.hierarchy import layout
from lora_jax.studio import datasets, song_jobs
from lora_jax.studio import db as db_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
LAUNCHERS = {"parent": REPO / "launch" / "train_parent_adapter.py",
             "child": REPO / "launch" / "train_child_adapter.py"}
DEFAULT_BASE = REPO / "assets" / "base_model" / "base_model.safetensors"
FLAGS = ("epochs", "batch_size", "learning_rate", "rank", "alpha")  # the launchers' shorthands
CONFIG_KEYS = {"seq_len": "data.seq_len", "log_every": "run.log_every"}


class JobError(ValueError):
  """A training request that cannot become a job."""


def command(level: str, style: str, pack_dir: str, parent_lora: str, base_model: str,
            output_dir: str, cache_dir: str, params: dict) -> list[str]:
  """The launcher's argv for one job; `params` holds the request's hyperparameters (None: the
  config's default)."""
  genre, _, child = style.partition("/")
  argv = [sys.executable, str(LAUNCHERS[level]), f"--parent={genre}", f"--pack={pack_dir}",
          f"--base_model={base_model}", f"--output_dir={output_dir}",
          f"--config.data.cache_dir={cache_dir}"]
  if level == "child":
    argv += [f"--child={child}", f"--parent_lora={parent_lora}"]
  for key in FLAGS:
    if params.get(key) is not None:
      argv.append(f"--{key}={params[key]}")
  for key, path in CONFIG_KEYS.items():
    if params.get(key) is not None:
      argv.append(f"--config.{path}={params[key]}")
  return argv


def adapter_path(level: str, style: str, output_dir: str) -> str:
  """Where the launcher writes the finished .lora."""
  genre, _, child = style.partition("/")
  if level == "parent":
    return layout.parent_lora(output_dir, genre)
  return layout.child_lora(output_dir, genre, child)


def run_dir(level: str, style: str, output_dir: str) -> str:
  """Where the job's loop writes status.json, metrics.csv and its checkpoints."""
  if level == "song":
    return song_jobs.run_dir(output_dir)
  genre, _, child = style.partition("/")
  level_dir = (layout.parent_dir(output_dir, genre) if level == "parent"
               else layout.child_dir(output_dir, genre, child))
  return layout.run_dir(level_dir)


def _number(text: str) -> float | None:
  if text == "":
    return None
  value = float(text)
  return value if math.isfinite(value) else None


def read_status(run: str) -> dict:
  """The run's status.json; {} before the loop wrote it."""
  try:
    with open(os.path.join(run, "status.json")) as f:
      return json.load(f)
  except FileNotFoundError:
    return {}


def read_metrics(run: str) -> list[dict]:
  """{step, epoch, train_loss, val_loss, lr} per metrics.csv row; [] before the first."""
  try:
    with open(os.path.join(run, "metrics.csv"), newline="") as f:
      rows = list(csv.DictReader(f))
  except FileNotFoundError:
    return []
  out = []
  for r in rows:
    try:
      out.append({"step": int(r["step"]), "epoch": int(r["epoch"]),
                  "train_loss": _number(r["train_loss"]), "val_loss": _number(r["val_loss"]),
                  "lr": _number(r["lr"])})
    except (KeyError, ValueError):  # a row being appended right now
      break
  return out


def progress(run: str) -> dict:
  """Step, losses and ETA of a run, from the files its loop writes."""
  status = read_status(run)
  rows = read_metrics(run)
  vals = [r for r in rows if r["val_loss"] is not None]
  return {"run_state": status.get("state"), "step": status.get("step", 0),
          "total_steps": status.get("total_steps"), "epoch": status.get("epoch"),
          "train_loss": status.get("train_loss"),
          "val_loss": vals[-1]["val_loss"] if vals else None,
          "best_val_loss": status.get("best_val_loss"),
          "steps_per_s": status.get("steps_per_s"), "eta_s": status.get("eta_s"),
          "updated": status.get("updated")}


def log_tail(path: str, n_bytes: int = 8000) -> str:
  """The end of a job's log."""
  try:
    with open(path, "rb") as f:
      f.seek(max(0, os.path.getsize(path) - n_bytes))
      return f.read().decode("utf-8", "replace")
  except FileNotFoundError:
    return ""


def error_line(log: str) -> str:
  """The launcher's one error line (`name: error: ...`), else the log's last line."""
  lines = [line for line in log.strip().splitlines() if line.strip()]
  for line in reversed(lines):
    if ": error: " in line:
      return line
  return lines[-1] if lines else "no output"


def create(database: db_lib.Database, store, base_model: str, name: str, level: str,
           dataset_id: str, parent_adapter_id: str | None, params: dict) -> str:
  """Check a training request against the state and queue it as a job; its id."""
  dataset = datasets.ready(database, dataset_id, "midi", JobError)
  style = dataset["style"]
  parent_lora = ""
  if level == "parent":
    if parent_adapter_id:
      raise JobError("a parent adapter is trained over the base alone: leave parent_adapter_id "
                     "empty, or choose level 'child'")
    style = style.split("/")[0]
  else:
    if "/" not in style:
      raise JobError(f"dataset {dataset_id} is the genre {style!r}; a child adapter needs a "
                     f"dataset of a sub-style ('genre/sub_style')")
    if not parent_adapter_id:
      raise JobError("a child adapter trains over its parent: give parent_adapter_id")
    parent = database.one("SELECT * FROM adapters WHERE id = ?", (parent_adapter_id,))
    if parent is None:
      raise db_lib.NotFound(f"no adapter {parent_adapter_id}")
    genre = style.split("/")[0]
    if parent["level"] != "parent" or parent["style"] != genre:
      raise JobError(f"adapter {parent_adapter_id} is the {parent['level']} adapter of "
                     f"{parent['style']!r}, not the parent adapter of genre {genre!r}")
    parent_lora = store.blob_path(parent["sha256"])
  job_id = db_lib.new_id()
  output_dir = store.folder("jobs", job_id)
  argv = command(level, style, datasets.pack_dir(store, dataset, style), parent_lora, base_model,
                 output_dir, os.path.join(store.root, "windows"), params)
  database.execute(
      "INSERT INTO jobs (id, name, level, dataset_id, parent_adapter_id, params, argv, "
      "output_dir, state, message, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', '', ?)",
      (job_id, name, level, dataset_id, parent_adapter_id, json.dumps(params), json.dumps(argv),
       os.path.relpath(output_dir, store.root), db_lib.now()))
  return job_id
