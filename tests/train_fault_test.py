"""Faults against the real launch path (subprocesses of launch/train.py): kill -9 at random steps,
during a checkpoint write, and SIGTERM, and a checkpoint folder that cannot be written (one
error line, the previous checkpoint kept), each followed by the same command, end in the adapter
an uninterrupted run writes, bit for bit."""

import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

from lora_jax import lora, tree_paths
from lora_jax.train import exit_status

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 120
COMMAND = [sys.executable, str(ROOT / "launch" / "train.py"),
           "--config=" + str(ROOT / "configs" / "music_lm.py") + ":tiny",
           "--config.model.n_layers=1", f"--config.training.steps={STEPS}",
           "--config.training.log_every=1", "--config.ckpt.every_steps=3",
           "--config.training.eval_every=40", "--config.ckpt.export=final"]


def env(cache_dir) -> dict:
  e = dict(os.environ)
  e["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  e["JAX_PLATFORMS"] = "cpu"
  e["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)  # launches after the first skip compiling
  e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return e


def step_of(workdir: pathlib.Path) -> int:
  try:
    return json.loads((workdir / "status.json").read_text())["step"]
  except (FileNotFoundError, KeyError, json.JSONDecodeError):
    return -1


def writing(workdir: pathlib.Path) -> bool:
  try:
    return any("orbax-checkpoint-tmp" in n for n in os.listdir(workdir / "checkpoints"))
  except FileNotFoundError:
    return False


class Launch:
  """One launch of the command into `workdir`, with its output in a file."""

  def __init__(self, workdir: pathlib.Path, cache: pathlib.Path, log: pathlib.Path):
    self.log = log
    with open(log, "w") as out:
      self.proc = subprocess.Popen(COMMAND + [f"--workdir={workdir}"], env=env(cache),
                                   stdout=out, stderr=subprocess.STDOUT)

  def wait_for(self, ready, what: str) -> None:
    deadline = time.time() + 240
    while not ready():
      if self.proc.poll() is not None or time.time() > deadline:
        self.proc.kill()
        raise AssertionError(f"never reached {what}: {self.log.read_text()[-3000:]}")
      time.sleep(0.002)

  def end(self, sig: int | None = None) -> int:
    if sig is not None:
      self.proc.send_signal(sig)
    return self.proc.wait(timeout=240)


def adapter_tensors(workdir: pathlib.Path) -> dict:
  record = lora.load_adapter(str(workdir / "adapter.lora"))
  return {tree_paths.dotted(k): np.asarray(v)
          for k, v in tree_paths.flatten(record.adapter.params).items()}


def immutable(path: pathlib.Path, on: bool) -> bool:
  """Make `path` unwritable in a way that also binds root (who ignores permissions: chattr +i);
  False where this system cannot."""
  if os.geteuid() != 0:
    path.chmod(0o555 if on else 0o755)
    return True
  if shutil.which("chattr") is None:
    return False
  done = subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True)
  return done.returncode == 0


def test_kill_9_sigterm_and_a_kill_during_a_write_resume_bit_exactly(tmp_path):
  cache = tmp_path / "cache"
  whole, parts = tmp_path / "whole", tmp_path / "parts"
  assert Launch(whole, cache, tmp_path / "whole.log").end() == 0

  rng = random.Random(13)
  kills = sorted(rng.sample(range(5, STEPS - 20), 2))
  events = []
  for i, target in enumerate(kills):  # kill -9 once past a random step
    run = Launch(parts, cache, tmp_path / f"kill{i}.log")
    run.wait_for(lambda: step_of(parts) >= target, f"step {target}")
    assert run.end(signal.SIGKILL) == -signal.SIGKILL
    events.append(("kill -9", step_of(parts)))
  run = Launch(parts, cache, tmp_path / "write.log")  # kill -9 while a checkpoint is written
  run.wait_for(lambda: writing(parts) and step_of(parts) > kills[-1], "a checkpoint write")
  assert run.end(signal.SIGKILL) == -signal.SIGKILL
  events.append(("kill -9 writing", step_of(parts)))
  assert writing(parts)  # the half-written checkpoint is there, under its temporary name
  run = Launch(parts, cache, tmp_path / "term.log")  # SIGTERM mid-run: checkpoint, exit 75
  target = step_of(parts) + 5
  run.wait_for(lambda: step_of(parts) >= target, f"step {target}")
  assert run.end(signal.SIGTERM) == exit_status.STOPPED, (tmp_path / "term.log").read_text()
  events.append(("SIGTERM", step_of(parts)))
  assert not (parts / "adapter.lora").exists()
  kept = sorted(os.listdir(parts / "checkpoints"))
  if immutable(parts / "checkpoints", True):  # a folder that refuses the next checkpoint
    try:
      refused = Launch(parts, cache, tmp_path / "unwritable.log").end()
    finally:
      immutable(parts / "checkpoints", False)
    out = (tmp_path / "unwritable.log").read_text()
    errors = [line for line in out.splitlines() if line.startswith("train: error:")]
    assert refused == 1 and len(errors) == 1 and "Traceback" not in out, out[-3000:]
    assert "orbax-checkpoint-tmp" in errors[0], errors
    assert json.loads((parts / "status.json").read_text())["state"] == "failed"
    assert sorted(os.listdir(parts / "checkpoints")) == kept
    events.append(("unwritable", step_of(parts)))
  assert Launch(parts, cache, tmp_path / "last.log").end() == 0  # from the kept checkpoint
  assert not writing(parts)  # the killed write's temporary folder was cleaned up

  a, b = adapter_tensors(whole), adapter_tensors(parts)
  assert a.keys() == b.keys()
  for k in a:
    assert np.array_equal(a[k], b[k]), (k, events)
  steps = [int(r.split(",")[0]) for r in (parts / "metrics.csv").read_text().splitlines()[1:]]
  assert steps == list(range(STEPS + 1)), events  # one row a step, none twice
