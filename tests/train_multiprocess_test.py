"""A multi-process run, as on a TPU pod: two processes with four CPU devices each train one
adapter over a (data 4, fsdp 2) mesh that spans both, and end with the parameters an
eight-device single-process run reaches; one process writes the files."""

import csv
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

from lora_jax import lora, tree_paths

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, str(ROOT / "launch" / "train.py"),
          "--config=" + str(ROOT / "configs" / "music_lm.py") + ":tiny",
          "--config.training.steps=12", "--config.mesh.data=4", "--config.mesh.fsdp=2"]


def env(devices: int) -> dict:
  e = dict(os.environ)
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  e["JAX_PLATFORMS"] = "cpu"
  return e


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def adapter_params(workdir) -> dict:
  record = lora.load_adapter(str(workdir / "adapter.lora"))
  return {tree_paths.dotted(k): np.asarray(v)
          for k, v in tree_paths.flatten(record.adapter.params).items()}


def test_two_processes_train_as_one_eight_device_process(tmp_path):
  single = tmp_path / "single"
  subprocess.run(LAUNCH + [f"--workdir={single}"], env=env(8), check=True, timeout=600,
                 capture_output=True)

  multi = tmp_path / "multi"
  port = free_port()
  procs = [subprocess.Popen(
      LAUNCH + [f"--workdir={multi}", "--distributed", f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2", f"--process_id={i}"],
      env=env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  assert "process 1 of 2" in outputs[1] and "on 8 devices (4 here" in outputs[0]

  want, got = adapter_params(single), adapter_params(multi)
  assert sorted(got) == sorted(want)
  for k in want:
    # Cross-process reductions (gloo) may add in another order than in-process ones.
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
  with open(multi / "status.json") as f:
    assert json.load(f)["state"] == "finished"
  with open(multi / "metrics.csv") as f:
    rows = list(csv.DictReader(f))
  assert [int(r["step"]) for r in rows] == [0, 5, 10, 12]  # one writer: no repeated rows
