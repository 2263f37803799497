"""Builds the compiled CPU kernels for this machine: `python -m lora_jax.kernels [--force]`."""

import sys

from lora_jax import kernels


def main(argv: list[str]) -> int:
  if set(argv) - {"--force"}:
    print(f"usage: python -m lora_jax.kernels [--force] (got {' '.join(argv)})", file=sys.stderr)
    return 2
  try:
    path = kernels.build(force="--force" in argv)
  except kernels.KernelBuildError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"CPU kernels: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
