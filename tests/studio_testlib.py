"""Real MIDI for the studio tests: O'Neill's jigs from the music21 corpus, as a user's files."""

import io
import os
import zipfile

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
