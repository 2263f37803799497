"""SIGTERM in a run's first moments, before or just after the loop installs its handler, leaves
nothing half-written: the run is either killed before writing anything or stops with a whole
checkpoint (exit 75), and the same command then finishes."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from lora_jax.train import exit_status

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMAND = [sys.executable, str(ROOT / "launch" / "train.py"),
           "--config=" + str(ROOT / "configs" / "music_lm.py") + ":tiny",
           "--config.model.n_layers=1", "--config.training.steps=6"]


def env(cache_dir) -> dict:
  return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
          "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def check_whole(workdir: pathlib.Path) -> None:
  """Every file the run left is complete: no temporary files, status and metrics parse."""
  if not workdir.exists():
    return
  for root, dirs, files in os.walk(workdir):
    assert not [n for n in files + dirs if n.endswith(".tmp") or "checkpoint-tmp" in n], root
  if (workdir / "status.json").exists():
    json.loads((workdir / "status.json").read_text())
  if (workdir / "metrics.csv").exists():
    assert (workdir / "metrics.csv").read_text().endswith("\n")


def test_sigterm_at_start_leaves_nothing_half_written(tmp_path):
  cache, workdir = tmp_path / "cache", tmp_path / "run"
  moments = [lambda: True,  # at once: Python is still importing
             lambda: (workdir / "run.lock").exists()]  # the lock is taken, the handler next
  for i, ready in enumerate(moments):
    proc = subprocess.Popen(COMMAND + [f"--workdir={workdir}"], env=env(cache),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not ready() and proc.poll() is None and time.time() < deadline:
      time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode in (-signal.SIGTERM, exit_status.STOPPED), (i, out[-3000:])
    check_whole(workdir)
  done = subprocess.run(COMMAND + [f"--workdir={workdir}"], env=env(cache), capture_output=True,
                        text=True, timeout=180)
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.loads((workdir / "status.json").read_text())["state"] == "finished"
