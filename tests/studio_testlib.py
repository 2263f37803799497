"""Real MIDI for the studio tests: O'Neill's jigs from the music21 corpus, as a user's files."""

import io
import os
import pathlib
import socket
import subprocess
import sys
import time
import zipfile

import httpx

from music21 import converter

from lora_jax.data.style_packs import corpus as style_corpus
import own_music_testlib

# A job that trains in seconds on the shipped base: tiny windows, a small rank.
TINY = {"epochs": 2, "batch_size": 4, "seq_len": 32, "rank": 2, "alpha": 4.0,
        "learning_rate": 1e-2, "log_every": 1}


def jig_files(n: int = 4) -> list[tuple[str, bytes]]:
  """(name, bytes) of `n` jigs written as MIDI by pretty_midi."""
  out = []
  for i, text in enumerate(own_music_testlib._tunes("jig", n)):
    pm, _ = style_corpus.score_to_midi(converter.parseData(text, format="abc"), 40)
    buffer = io.BytesIO()
    pm.write(buffer)
    out.append((f"jig_{i}.mid", buffer.getvalue()))
  return out


def zipped(files: list[tuple[str, bytes]], extra: dict[str, bytes] = {}) -> bytes:
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w") as z:
    for name, data in files:
      z.writestr(f"tunes/{name}", data)
    for name, data in extra.items():
      z.writestr(name, data)
  return buffer.getvalue()


def worker_env(cache_dir: str) -> tuple[tuple[str, str], ...]:
  """One CPU device (conftest's eight fake ones are for in-process tests), a compile cache."""
  return (("XLA_FLAGS", "--xla_force_host_platform_device_count=1"), ("JAX_PLATFORMS", "cpu"),
          ("JAX_COMPILATION_CACHE_DIR", os.path.join(cache_dir, "xla")),
          ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0"))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def server(root, port: int) -> subprocess.Popen:
  """launch/studio.py on `root`, once it answers."""
  env = dict(os.environ, **dict(worker_env(str(pathlib.Path(root).parent))))
  script = pathlib.Path(__file__).resolve().parents[1] / "launch" / "studio.py"
  proc = subprocess.Popen([sys.executable, str(script), f"--root={root}", f"--port={port}"],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 90
  while time.time() < deadline and proc.poll() is None:
    try:
      if httpx.get(f"http://127.0.0.1:{port}/api/training/jobs", timeout=1).status_code == 200:
        return proc
    except httpx.TransportError:
      time.sleep(0.2)
  proc.kill()
  raise AssertionError(proc.stderr.read().decode()[-3000:])
