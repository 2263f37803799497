"""One run per workdir: a second run is refused at once, naming the first; kill -9 frees it."""

import os
import pathlib
import signal
import socket
import subprocess
import sys

import jax
import pytest

from lora_jax.train import config as config_lib
from lora_jax.train import loop
from lora_jax.train import workdir_lock

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "music_lm.py")
HOLD = ("import sys, time\n"
        "from lora_jax.train import workdir_lock\n"
        "workdir_lock.WorkdirLock(sys.argv[1]).__enter__()\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n")


def tiny(**overrides) -> config_lib.TrainConfig:
  return config_lib.load(CONFIG, "tiny", {"model.n_layers": 1, **overrides})


@pytest.fixture
def holder(tmp_path):
  """A subprocess holding the lock of `tmp_path / 'run'`."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], stdout=subprocess.PIPE,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
  assert proc.stdout.readline().strip() == "locked"
  yield workdir, proc
  if proc.poll() is None:
    proc.kill()
  proc.wait()


def test_a_second_run_is_refused_naming_the_first_and_writes_nothing(holder):
  workdir, proc = holder
  before = sorted(os.listdir(workdir))
  with pytest.raises(workdir_lock.WorkdirBusyError) as refused:
    loop.train(tiny(), str(workdir), devices=jax.devices()[:1])
  message = str(refused.value)
  assert "\n" not in message
  assert f"pid {proc.pid} on {socket.gethostname()} since 20" in message, message
  assert str(workdir) in message
  assert sorted(os.listdir(workdir)) == before == ["run.lock"]  # no status.json 'failed' either


def test_kill_9_of_the_holder_frees_the_workdir(holder):
  workdir, proc = holder
  with pytest.raises(workdir_lock.WorkdirBusyError):
    workdir_lock.WorkdirLock(str(workdir)).__enter__()
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  result = loop.train(tiny(), str(workdir), devices=jax.devices()[:1], stop_after=1)
  assert result.status == "stopped" and result.step == 1
  # Released when train returns: the same process (or the next run) takes it again.
  with workdir_lock.WorkdirLock(str(workdir)) as lock:
    assert f"pid {os.getpid()} " in pathlib.Path(lock.path).read_text()


def test_processes_of_one_run_lock_separately(tmp_path):
  with workdir_lock.WorkdirLock(str(tmp_path), 0), workdir_lock.WorkdirLock(str(tmp_path), 1):
    with pytest.raises(workdir_lock.WorkdirBusyError):  # a second run's process 1
      workdir_lock.WorkdirLock(str(tmp_path), 1).__enter__()
  assert sorted(os.listdir(tmp_path)) == ["run.lock", "run.lock.1"]
