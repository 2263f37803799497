"""The real launch path in subprocesses: SIGTERM checkpoints and exits cleanly, a second launch
resumes from that checkpoint and finishes."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from lora_jax.train import exit_status

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, str(ROOT / "launch" / "train.py"),
          "--config=" + str(ROOT / "configs" / "music_lm.py") + ":tiny",
          "--config.model.n_layers=1"]


def env(cache_dir) -> dict:
  e = dict(os.environ)
  # Two fake devices; the second launch reuses the first one's compilations from the cache.
  e["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  e["JAX_PLATFORMS"] = "cpu"
  e["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
  e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return e


def read_status(workdir) -> dict | None:
  try:
    with open(os.path.join(workdir, "status.json")) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def test_sigterm_checkpoints_and_a_second_launch_resumes(tmp_path):
  workdir = tmp_path / "run"
  # A run far longer than the test: it only ends by SIGTERM.
  first = subprocess.Popen(
      LAUNCH + [f"--workdir={workdir}", "--config.training.steps=100000",
                "--config.training.log_every=1", "--config.opt.warmup_steps=2"],
      env=env(tmp_path / "cache"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 120
  while time.time() < deadline:
    st = read_status(workdir)
    if st and st["state"] == "running" and st["step"] >= 3:
      break
    assert first.poll() is None, first.communicate()[0][-3000:]
    time.sleep(0.2)
  else:
    first.kill()
    raise AssertionError("the first launch never reached step 3")
  first.send_signal(signal.SIGTERM)
  out, _ = first.communicate(timeout=120)
  assert first.returncode == exit_status.STOPPED, out[-3000:]  # stopped, resumable
  stopped = read_status(workdir)
  assert stopped["state"] == "stopped", stopped
  k = stopped["step"]
  assert str(k) in os.listdir(workdir / "checkpoints"), os.listdir(workdir / "checkpoints")
  assert "SIGTERM" in out
  assert not (workdir / "adapter.lora").exists()

  second = subprocess.run(
      LAUNCH + [f"--workdir={workdir}", f"--config.training.steps={k + 4}",
                "--config.training.log_every=1", "--config.opt.warmup_steps=2"],
      env=env(tmp_path / "cache"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      timeout=180)
  assert second.returncode == 0, second.stdout[-3000:]
  assert f"resumed from step {k}" in second.stdout
  done = read_status(workdir)
  assert done["state"] == "finished" and done["step"] == k + 4
  assert (workdir / "adapter.lora").exists()
  steps = [int(line.split(",")[0]) for line in
           (workdir / "metrics.csv").read_text().splitlines()[1:]]
  assert steps == sorted(set(steps)) and steps[-1] == k + 4 and k in steps
