"""Builds the compiled CPU kernels for this machine: `python -m lora_jax.kernels [--force]`.

The attention kernel is required (a failure exits 1); the oneDNN bfloat16 matmul is optional: where
oneDNN is not installed one line says it is skipped and what then runs.
"""

import sys

from lora_jax import kernels
from lora_jax.kernels import onednn


def main(argv: list[str]) -> int:
  if set(argv) - {"--force"}:
    print(f"usage: python -m lora_jax.kernels [--force] (got {' '.join(argv)})", file=sys.stderr)
    return 2
  force = "--force" in argv
  try:
    path = kernels.build(force=force)
  except kernels.KernelBuildError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"CPU kernels: {path}")
  if not onednn.headers_installed():
    print("bfloat16 matmul kernel skipped: oneDNN is not installed (apt-get install "
          "libdnnl-dev); bfloat16 dense layers run XLA's dot")
    return 0
  try:
    print(f"bfloat16 matmul kernel: {onednn.build(force=force)}")
  except kernels.KernelBuildError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
