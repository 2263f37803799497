"""Merge bandwidth and peak memory: `lora.merge(..., donate=True)` against a plain copy.

  .venv/bin/python bench/merge_bandwidth.py                     # 1 GiB float32 base, rank 16
  .venv/bin/python bench/merge_bandwidth.py --kernels=8 --dim=1024 --rounds=3   # quicker

The base is a plain stack of `--kernels` float32 kernels of `--dim` x `--dim` (64 x 2048^2 = 1 GiB
by default), a rank-16 adapter on every kernel (B random, so the merge is real work). Measured in
this one run:
  1. bandwidth: bytes of the base read + written (2 x its size) per second, best round of each arm,
     arms alternating in every round so drift in the machine's speed lands on all of them:
       merge      `merge(base, [adapter], donate=True)`, its result fed to the next round;
       jax copy   a jitted copy of the same tree (`x + 0` per leaf, not donated: a new tree);
       numpy copy `np.copyto` of every leaf into a preallocated tree (no page faults);
  2. peak memory of each arm in a fresh child process: the base's size plus what the arm adds to
     the RSS while it runs (VmHWM, reset once the base exists and malloc is trimmed, minus the RSS
     then), against the base's size. The base
     itself is 1.00x; a copy is 2.00x by construction; a donated merge should stay near 1.00x.
"""

import argparse
import ctypes
import importlib
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from lora_jax import allocator, lora  # noqa: E402
from lora_jax.lora.adapter import Adapter  # noqa: E402

# The module, not the function `lora.merge` that the package re-exports under the same name.
merge_lib = importlib.import_module("lora_jax.lora.merge")
ARMS = ("merge", "jax_copy", "numpy_copy")


def _names(n: int) -> list[str]:
  return [f"kernel_{i:03d}" for i in range(n)]


def make_base(kernels: int, dim: int, seed: int = 0) -> dict:
  """{kernel_i: {kernel: float32 [dim, dim]}}, on the device (numpy leaves for the numpy arm)."""
  rng = np.random.default_rng(seed)
  return {n: {"kernel": rng.standard_normal((dim, dim), np.float32)} for n in _names(kernels)}


def make_adapter(kernels: int, dim: int, rank: int, seed: int = 1) -> Adapter:
  rng = np.random.default_rng(seed)
  params = {n: {"lora_A": jnp.asarray(rng.standard_normal((dim, rank), np.float32) * 0.01),
                "lora_B": jnp.asarray(rng.standard_normal((rank, dim), np.float32) * 0.01)}
            for n in _names(kernels)}
  scales = {n: jnp.float32(2.0) for n in _names(kernels)}
  return Adapter(params, scales)


def device_base(kernels: int, dim: int, seed: int = 0) -> dict:
  """The same kind of tree as `make_base`, drawn by XLA straight into device buffers."""
  draw = jax.jit(lambda key: jax.random.normal(key, (dim, dim), jnp.float32))
  keys = jax.random.split(jax.random.key(seed), kernels)
  return {n: {"kernel": draw(keys[i])} for i, n in enumerate(_names(kernels))}


_jax_copy = jax.jit(lambda tree: jax.tree.map(lambda x: x + 0, tree))


def _peak_rss_bytes() -> int:
  # VmHWM starts afresh at exec; ru_maxrss would carry the forking parent's peak over.
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _reset_peak_rss() -> None:
  # Linux: writing 5 to clear_refs resets VmHWM to the current RSS.
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(arm: str, kernels: int, dim: int, rank: int) -> dict:
  """Peak memory of one arm, in this (fresh) process; printed as JSON."""
  adapter = make_adapter(kernels, dim, rank)
  # Compiled on abstract arrays before the base exists, so the base and the arm are all the
  # baseline does not hold.
  abstract = {n: {"kernel": jax.ShapeDtypeStruct((dim, dim), jnp.float32)} for n in _names(kernels)}
  if arm == "merge":
    weights = jnp.ones((1,), jnp.float32)
    # merge(..., donate=True)'s own jitted function, compiled before the base exists.
    compiled = merge_lib._fold_jit_donated.lower(abstract, (adapter,), weights, 1.0).compile()
  elif arm == "jax_copy":
    compiled = _jax_copy.lower(abstract).compile()
  baseline = _rss_bytes()
  if arm == "numpy_copy":
    base = make_base(kernels, dim)
  else:
    # Drawn on the device leaf by leaf: a numpy base moved over would stay in the host heap.
    base = device_base(kernels, dim)
    jax.block_until_ready(base)
  # The peak from here on is the arm's own, not the drawing of the base's random numbers (whose
  # freed temporaries malloc would otherwise keep resident).
  ctypes.CDLL("libc.so.6").malloc_trim(0)
  rss_with_base = _rss_bytes()
  _reset_peak_rss()
  if arm == "numpy_copy":
    t = time.perf_counter()
    out = {n: {"kernel": np.copy(v["kernel"])} for n, v in base.items()}
  else:
    t = time.perf_counter()
    if arm == "merge":
      out = compiled(base, (adapter,), weights)
    else:
      out = compiled(base)
    jax.block_until_ready(out)
  seconds = time.perf_counter() - t
  peak = _peak_rss_bytes()
  donated = all(v["kernel"].is_deleted() for v in base.values()) if arm == "merge" else None
  return {"arm": arm, "baseline": baseline, "rss_with_base": rss_with_base, "peak": peak,
          "seconds": seconds, "donated": donated}


def bandwidth(args, base_bytes: int) -> dict[str, float]:
  adapter = make_adapter(args.kernels, args.dim, args.rank)
  host = make_base(args.kernels, args.dim)
  dst = {n: {"kernel": np.empty_like(v["kernel"])} for n, v in host.items()}
  base = device_base(args.kernels, args.dim)
  weights = [1.0]
  # Warm up every arm (compiles, first-touch page faults of the numpy destination).
  base = jax.block_until_ready(lora.merge(base, [adapter], weights, donate=True))
  jax.block_until_ready(_jax_copy(base))
  jax.tree.map(np.copyto, dst, host)
  best = {arm: float("inf") for arm in ARMS}
  for r in range(args.rounds):
    t = time.perf_counter()
    base = jax.block_until_ready(lora.merge(base, [adapter], weights, donate=True))
    best["merge"] = min(best["merge"], time.perf_counter() - t)
    t = time.perf_counter()
    copy = jax.block_until_ready(_jax_copy(base))
    best["jax_copy"] = min(best["jax_copy"], time.perf_counter() - t)
    del copy
    t = time.perf_counter()
    jax.tree.map(np.copyto, dst, host)
    best["numpy_copy"] = min(best["numpy_copy"], time.perf_counter() - t)
  return {arm: 2 * base_bytes / s / 1e9 for arm, s in best.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kernels", type=int, default=64)
  parser.add_argument("--dim", type=int, default=2048)
  parser.add_argument("--rank", type=int, default=16)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(child(args.child, args.kernels, args.dim, args.rank)))
    return
  base_bytes = args.kernels * args.dim * args.dim * 4
  print(f"base: {args.kernels} float32 kernels of {args.dim} x {args.dim} = "
        f"{base_bytes / 2**30:.3f} GiB; a rank-{args.rank} adapter on every kernel; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
  # Children first, while this process is small.
  for arm in ARMS:
    cmd = [sys.executable, os.path.abspath(__file__), f"--child={arm}", f"--kernels={args.kernels}",
           f"--dim={args.dim}", f"--rank={args.rank}"]
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    extra = r["peak"] - r["rss_with_base"]
    peak = (base_bytes + extra) / base_bytes
    line = (f"peak memory, fresh process, {arm}: the base + {extra / 2**20:,.1f} MiB = {peak:.3f}x "
            f"the base (RSS before the base existed to the peak: "
            f"{(r['peak'] - r['baseline']) / 2**20:,.0f} MiB, which includes compiling the draw)")
    if arm == "merge":
      line += (f"; target <= 1.05x: {'met' if peak <= 1.05 else 'NOT met'}; every base buffer "
               f"donated: {r['donated']}")
    print(line)
  # The launch scripts' host malloc setting, so the jax copy's fresh 1 GiB output reuses the
  # last round's pages instead of faulting them in anew (the merge writes in place either way).
  kept = allocator.keep_freed_memory()
  print(f"host malloc keeps freed memory (lora_jax.allocator): {'yes' if kept else 'no'}")
  gbps = bandwidth(args, base_bytes)
  print(f"bandwidth (base read + written, best of {args.rounds} alternating rounds), GB/s: "
        + ", ".join(f"{arm} {v:.2f}" for arm, v in gbps.items()))
  copy = max(gbps["jax_copy"], gbps["numpy_copy"])
  verdict = "met" if gbps["merge"] >= 0.5 * copy else "NOT met"
  print(f"merge / best copy: {gbps['merge'] / copy:.0%} (target >= 50%: {verdict})")


if __name__ == "__main__":
  main()
