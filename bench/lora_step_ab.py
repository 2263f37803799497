"""A/B of the choices made in the CPU train step, in one process, in alternating rounds.

  .venv/bin/python bench/lora_step_ab.py --what=WHAT

WHAT is one of:
  gelu     erf GELU (ours) against jax.nn's erfc
  block    causal attention query blocks of 128 (ours), 64, 256
  lora_da  the LoRA A gradient as two row halves in one batched dot (ours), or x.T @ dh
  chunk    causal attention over batch chunks of 8 (row, head) pairs (ours), 4, 16, or none
  fold     the adapter's B folded into ff.in's product (ours), or a separate delta
  kernel   causal attention by the compiled C++ kernel (ours, lora_jax/kernels), or the jnp one
  kernel_block  the compiled kernel's query blocks of 64 (ours), 32, 48, 128

Each variant is our real LoRA train step (lora_step_bench's, 4 layers, d=256, T=512, batch 8,
rank 16) jitted with the choice switched; the variants run in turn, `--rounds` times, and each
keeps its best round. This machine's speed drifts over minutes, so only this within-process
comparison says which choice is faster.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402

import lora_step_bench as bench  # noqa: E402  (same directory)
from lora_jax import allocator  # noqa: E402
from lora_jax.lora import forward  # noqa: E402
from lora_jax.models import activations  # noqa: E402
from lora_jax.models import attention  # noqa: E402
from lora_jax.models import transformer  # noqa: E402


WHATS = ("gelu", "block", "lora_da", "chunk", "fold", "kernel", "kernel_block")


def variants(what: str) -> dict:
  """name -> a function that switches the choice (read when the step is traced)."""
  if what == "gelu":
    def use(fn):
      return lambda: setattr(transformer, "gelu", fn)
    return {"erf (lora_jax)": use(activations.gelu),
            "erfc (jax.nn)": use(lambda x: jax.nn.gelu(x, approximate=False))}
  if what == "block":
    return {f"block {n}": (lambda n=n: setattr(attention, "BLOCK", n)) for n in (128, 64, 256)}
  if what == "lora_da":
    halved = forward._rows_contracted
    def use(fn):
      return lambda: setattr(forward, "_rows_contracted", fn)
    def transposed_first(x, d):
      d_t = jax.lax.optimization_barrier(d.T)
      return jax.lax.optimization_barrier(d_t @ x).T
    return {"halved (ours)": use(halved), "x.T @ dh": use(lambda x, d: x.T @ d),
            "(dh^T x)^T": use(transposed_first)}
  if what == "chunk":
    pairs = {"8 pairs (ours)": 8, "4 pairs": 4, "16 pairs": 16, "no chunks": 10**9}
    return {name: (lambda n=n: setattr(attention, "PAIRS_PER_CHUNK", n))
            for name, n in pairs.items()}
  if what == "fold":
    return {"folded (ours)": lambda: setattr(forward, "FOLD_WIDENING", True),
            "separate delta": lambda: setattr(forward, "FOLD_WIDENING", False)}
  if what == "kernel":
    return {"compiled (ours)": lambda: setattr(attention, "USE_COMPILED_KERNEL", True),
            "jnp kernel": lambda: setattr(attention, "USE_COMPILED_KERNEL", False)}
  if what == "kernel_block":
    return {f"block {n}": (lambda n=n: setattr(attention, "KERNEL_BLOCK", n))
            for n in (64, 32, 48, 128)}
  raise ValueError(f"--what must be one of {', '.join(WHATS)}, not {what!r}")


def main():
  allocator.keep_freed_memory()  # as the launch scripts do; before JAX starts its threads
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--what", default="gelu", choices=WHATS)
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--steps", type=int, default=3)  # per round
  args = p.parse_args()
  bench_args = argparse.Namespace(vocab=512, heads=4, seq_len=512, rank=16, batch=8, d_model=256,
                                  layers=4, d_ff=1024, steps=args.steps)
  runners = {}
  for name, switch in variants(args.what).items():
    switch()
    runners[name] = bench.jax_stepper(bench_args)  # traced and compiled with the choice made
  best = {name: float("inf") for name in runners}
  for _ in range(args.rounds):
    for name, run in runners.items():
      best[name] = min(best[name], run())
  tokens = args.steps * bench_args.batch * bench_args.seq_len
  for name, seconds in best.items():
    print(f"{name:<16} {tokens / seconds:8,.0f} tokens/s")


if __name__ == "__main__":
  main()
