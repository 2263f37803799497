"""Host allocator settings for XLA:CPU training: keep freed memory for the next step.

XLA:CPU allocates each execution's temporary buffer (466 MB for the bench's train step) with
posix_memalign on one of its pool threads, and frees it when the step ends. glibc serves a block
that large from a thread's arena only through a fresh mmap (arena heaps stop at 64 MB), and a
freed mmap goes straight back to the kernel: the next step touches every page anew. Measured on
the bench step (bench/lora_step_bench.py's size): 119,000 minor page faults a step, 10-13% of
its time. With one arena (the main one, which grows by brk), no mmap for large blocks and no
trimming, glibc keeps the freed block and the next step reuses it: no faults.

`keep_freed_memory()` sets those three options through mallopt. It must run before the JAX
backend starts its threads (a thread that has taken an arena keeps it), so the launch scripts
call it first (`lora_jax.cli.run`); call it at the top of a notebook or script to get the same.
The cost: the process keeps its peak heap instead of returning freed memory to the system, and
all threads share one arena's lock. It is skipped (returns False) off Linux/glibc, when
LORA_JAX_MALLOC=default, when the environment already sets glibc's malloc options (the
user's choice wins), and where JAX will run on an accelerator (JAX_PLATFORMS names one, or,
unset, a GPU or TPU plugin is installed): there the step's buffers live in device memory, and
the gain was measured on CPU only.
"""

import ctypes
from importlib import metadata
import os
import platform
import sys

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
_USER_KNOBS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_",
               "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
  """Sets glibc's malloc to keep and reuse freed memory (see above); True if it was set."""
  if os.environ.get("LORA_JAX_MALLOC", "keep") == "default":
    return False
  if any(knob in os.environ for knob in _USER_KNOBS):
    return False
  if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
    return False
  if accelerator_expected():
    return False
  libc = ctypes.CDLL("libc.so.6")
  return all(libc.mallopt(option, value) == 1 for option, value in _SETTINGS)


_ACCELERATOR_PLUGINS = ("jax-cuda12-plugin", "jax-cuda13-plugin", "jax-rocm60-plugin",
                        "jax-rocm7-plugin", "libtpu", "libtpu-nightly")


def accelerator_expected() -> bool:
  """Whether JAX will start on a GPU or TPU, judged without starting it (see the module doc)."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms.split(",")[0].strip() not in ("cpu", "")
  for name in _ACCELERATOR_PLUGINS:
    try:
      metadata.version(name)
      return True
    except metadata.PackageNotFoundError:
      continue
  return False
