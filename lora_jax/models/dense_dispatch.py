"""Which product a bfloat16 dense layer runs: a pure decision over backend, dtype and CPU features.

XLA:CPU (jaxlib 0.10.2) computes a bfloat16 dot by converting both operands to float32 and running
a float32 product (its optimised HLO shows the converts around the dot), so bfloat16 is never
faster than float32 there, while oneDNN runs it on the CPU's bfloat16 dot-product instructions
(avx512_bf16, or AMX tiles). No XLA flag changes that: --xla_cpu_use_onednn,
--xla_cpu_experimental_onednn_custom_call, the xnn/ynn fusion types were each tried (docs/
performance.md). So on such CPUs the dense layers' bfloat16 products call oneDNN
(`lora_jax.models.bf16_matmul`); everywhere else XLA's dot runs, which on GPU and TPU is the
native bfloat16 path.

`choose(Call)` returns the path and the reason; tested on any machine for every case
(tests/bf16_matmul_test.py), and each distinct decision is logged once per process.
"""

import dataclasses
import functools
import platform

from absl import logging

PATHS = ("onednn_bf16", "xla")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of bfloat16 dot instructions


@dataclasses.dataclass(frozen=True)
class Call:
  """What a dense product is, as far as choosing its implementation goes."""

  backend: str  # jax.default_backend()
  dtype: str  # of both operands after the layer's dtype promotion
  cpu_flags: frozenset[str] = frozenset()
  kernel_built: bool = False


def choose(call: Call) -> tuple[str, str]:
  """(path, why) for `call`; see the module docstring."""
  if call.backend != "cpu":
    return "xla", f"XLA's dot is the native path on {call.backend}"
  if call.dtype != "bfloat16":
    return "xla", f"{call.dtype} products run XLA's dot"
  if not set(BF16_CPU_FLAGS) & call.cpu_flags:
    return "xla", (f"this CPU has none of {', '.join(BF16_CPU_FLAGS)}: oneDNN would emulate "
                   "bfloat16 no faster than XLA")
  if not call.kernel_built:
    return "xla", ("the oneDNN bfloat16 matmul is not built (apt-get install libdnnl-dev; "
                   "python -m lora_jax.kernels)")
  has = sorted(set(BF16_CPU_FLAGS) & call.cpu_flags)
  return "onednn_bf16", f"bfloat16 on a CPU with {', '.join(has)}"


@functools.cache
def cpu_flags() -> frozenset[str]:
  """This machine's CPU feature flags (empty where /proc/cpuinfo is not readable)."""
  try:
    with open("/proc/cpuinfo") as f:
      line = next((line for line in f if line.startswith("flags")), "")
  except OSError:
    return frozenset()
  return frozenset(line.partition(":")[2].split()) if platform.machine() == "x86_64" \
      else frozenset()


_LOGGED: set[tuple[str, str]] = set()


def log_once(call: Call, path: str, why: str) -> None:
  """One line per distinct decision and process, only for bfloat16 (float32 is the old path)."""
  if call.dtype != "bfloat16" or (path, why) in _LOGGED:
    return
  _LOGGED.add((path, why))
  logging.info("bfloat16 dense products: %s (%s)", path, why)
