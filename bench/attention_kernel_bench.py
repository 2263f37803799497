"""The causal attention alone, one layer at the bench size: compiled kernel, jnp kernel, jax.nn.

  .venv/bin/python bench/attention_kernel_bench.py             # forward + backward, jitted
  .venv/bin/python bench/attention_kernel_bench.py --harness   # also the C++ per-pair harness

Batch 8, T=512, 4 heads of 64 (lora_step_bench's model): each variant is jax.grad of
sum(attention(q, k, v) * w), jitted, timed in alternating rounds, best round kept. With --harness
it also compiles bench/attention_kernel_harness.cc against the kernel's source and times the
per-pair functions on one core, without XLA around them.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lora_jax import allocator  # noqa: E402
from lora_jax import kernels  # noqa: E402
from lora_jax.models import attention  # noqa: E402


def _timed(fn, args, steps: int):
  jax.block_until_ready(fn(*args))

  def run() -> float:
    t = time.perf_counter()
    for _ in range(steps):
      out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / steps
  return run


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rounds", type=int, default=6)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--harness", action="store_true")
  args = p.parse_args()
  allocator.keep_freed_memory()
  kernels.build()
  q, k, v, w = (jax.random.normal(key, (8, 512, 4, 64))
                for key in jax.random.split(jax.random.key(0), 4))
  variants = {
      "compiled kernel": attention.compiled_causal_attention,
      "jnp kernel": attention.causal_attention,
      "jax.nn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True),
  }
  runners = {
      name: _timed(jax.jit(jax.grad(lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v) * w), (0, 1, 2))),
                   (q, k, v), args.steps)
      for name, fn in variants.items()}
  best = dict.fromkeys(runners, float("inf"))
  for _ in range(args.rounds):
    for name, run in runners.items():
      best[name] = min(best[name], run())
  print("one layer's causal attention, batch 8, T=512, 4 heads of 64, forward + backward:")
  for name, seconds in best.items():
    print(f"  {name:<16} {1e3 * seconds:7.1f} ms")
  if args.harness:
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as tmp:
      binary = os.path.join(tmp, "harness")
      subprocess.run(kernels.compile_command(
          os.path.join(here, "attention_kernel_harness.cc"), binary,
          f'-DKERNEL="{kernels.SOURCE}"', library=False), check=True)
      subprocess.run([binary], check=True)


if __name__ == "__main__":
  main()
