"""Saved files are the same bytes every time: an adapter saved by two processes (whose hash maps
order metadata differently) is byte-identical, and the canonical header still reads back."""

import hashlib
import os
import pathlib
import subprocess
import sys

import numpy as np
import safetensors
import safetensors.numpy

from lora_jax import stable_safetensors

ROOT = pathlib.Path(__file__).resolve().parents[1]

SAVE = """
import sys
from lora_jax import lora
import testlib
_, params = testlib.tiny_model()
spec = lora.LoraSpec(rank=4, alpha=8, target_modules=("q_proj", "ff.out"))
record = lora.AdapterRecord(testlib.random_adapter(params, spec, seed=3), spec,
                            lora.fingerprint(params), "music_lm", "pop",
                            {"level": "parent", "b": 1, "a": [2, 3]})
lora.save_adapter(sys.argv[1], record)
"""


def test_the_same_adapter_saved_in_two_processes_is_byte_identical(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
  digests = []
  for i in range(2):
    path = tmp_path / f"pop{i}.lora"
    done = subprocess.run([sys.executable, "-c", SAVE, str(path)], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
  assert digests[0] == digests[1]


def test_canonical_header_sorts_metadata_and_reads_back(tmp_path):
  arrays = {"b.w": np.arange(6, dtype=np.float32).reshape(2, 3), "a.i": np.arange(3)}
  metadata = {"zz": "1", "aa": "2", "m": "é"}
  path = str(tmp_path / "x.safetensors")
  stable_safetensors.save_numpy(arrays, path, metadata)
  blob = pathlib.Path(path).read_bytes()
  assert blob == stable_safetensors.canonical(safetensors.numpy.save(arrays, metadata=metadata))
  header_size = int.from_bytes(blob[:8], "little")
  assert header_size % 8 == 0
  assert blob[8:8 + header_size].index(b'"aa"') < blob[8:8 + header_size].index(b'"zz"')
  with safetensors.safe_open(path, framework="numpy") as f:
    assert f.metadata() == metadata
    for name, array in arrays.items():
      np.testing.assert_array_equal(f.get_tensor(name), array)
