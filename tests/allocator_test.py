"""glibc keeps freed memory for the next step when a launch script runs (lora_jax.allocator)."""

import os
import subprocess
import sys

import pytest

# A launch script's shape: cli.run(main). main, on a thread of its own as XLA's pool threads are,
# allocates, touches and frees a block larger than a thread arena's 64 MB three times, and prints
# the page faults the last touch cost.
_PROBE = """
import ctypes, resource, threading
from lora_jax import cli

def main(argv):
  libc = ctypes.CDLL("libc.so.6")
  libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
  size, faults = 256 << 20, []

  def step():
    for _ in range(3):
      block = libc.malloc(size)
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      libc.memset(block, 1, size)
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
      libc.free(block)

  worker = threading.Thread(target=step)
  worker.start()
  worker.join()
  print(faults[-1])

cli.run(main, "probe")
"""


def _last_step_faults(**env) -> int:
  clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
  done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                        env={**clean, **env}, check=True)
  return int(done.stdout.split()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc options")
def test_launch_scripts_reuse_freed_blocks_instead_of_faulting_them_in_again():
  pages = (256 << 20) // os.sysconf("SC_PAGE_SIZE")
  assert _last_step_faults() < pages // 100
  # Switched off, or with the user's own malloc settings, glibc maps every step's block afresh.
  assert _last_step_faults(LORA_JAX_MALLOC="default") > pages // 2
  assert _last_step_faults(MALLOC_ARENA_MAX="8") > pages // 2
  # Where JAX will run on an accelerator the setting is left alone (it was measured on CPU).
  assert _last_step_faults(JAX_PLATFORMS="cuda") > pages // 2


def test_accelerator_expected_from_jax_platforms(monkeypatch):
  from lora_jax import allocator
  for value, expected in (("cpu", False), ("cuda", True), ("tpu,cpu", True), ("CPU", False)):
    monkeypatch.setenv("JAX_PLATFORMS", value)
    assert allocator.accelerator_expected() is expected, value
