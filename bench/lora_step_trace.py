"""Where the LoRA train step's time goes, op by op, from XLA's own trace.

  .venv/bin/python bench/lora_step_trace.py            # the bench size of lora_step_bench
  .venv/bin/python bench/lora_step_trace.py --top=40 --steps=5

XLA:CPU runs independent thunks side by side, so the durations in a profiler trace overlap and add
up to more than the step: a fusion that shares the cores looks twice as slow as it is. This script
shares each instant of the traced steps equally among the thunks running at that instant, so the
per-op times add up to the steps' wall time. It prints them grouped by pass (forward, or backward:
XLA's op names carry `transpose(jvp(...))`), by part of the layer (from the op's module path:
the q/k/v/out projections, attention, the feed-forward's dense layers and its elementwise work,
the layer norms, the head), and by whether the fusion holds a matmul; then the costliest fusions.

Found with it (README, "Speed and memory"): the batch chunks of the causal attention had their
gradients padded and summed (the transpose of slicing), and ff.in's LoRA delta was a separate
[N, 1024] array that each GELU fusion read again.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402

import lora_step_bench as bench  # noqa: E402  (same directory)
from lora_jax import allocator  # noqa: E402

_PARTS = (("attn/q_proj", "proj"), ("attn/k_proj", "proj"), ("attn/v_proj", "proj"),
          ("attn/out_proj", "proj"), ("attn", "attention"), ("ff/in", "ff dense"),
          ("ff/out", "ff dense"), ("ff", "ff other"), ("ln1", "layer norm"),
          ("ln2", "layer norm"), ("ln_f", "layer norm"), ("head", "head"))


def fusion_table(hlo_text: str) -> dict[str, tuple[str, str]]:
  """Instruction name -> (its op_name metadata, its kind: matmul, compiled kernel, or other)."""
  has_dot, computation = {}, None
  for line in hlo_text.splitlines():
    header = re.match(r"^%?([\w.\-]+) .*\{$", line)
    if header:
      computation = header.group(1)
      has_dot[computation] = False
    elif computation and re.search(r"= \S+ dot\(", line):
      has_dot[computation] = True
  table = {}
  for line in hlo_text.splitlines():
    inst = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (?:\([^=]*\)|\S+) ([\w\-]+)\("
                    r".*metadata=\{op_name=\"([^\"]+)\"", line)
    if inst:
      called = re.search(r"calls=%?([\w.\-]+)", line)
      dot = inst.group(2) == "dot" or bool(called and has_dot.get(called.group(1)))
      kind = ("compiled kernel" if inst.group(2) == "custom-call" else
              "matmul" if dot else "elementwise/copy")
      table[inst.group(1)] = (inst.group(3), kind)
  return table


def shared_times(events: list[tuple[float, float, str]]) -> collections.Counter:
  """Each name's share of wall time: every instant split equally among the events running."""
  edges = sorted([(start, 1, i) for i, (start, _, _) in enumerate(events)]
                 + [(stop, 0, i) for i, (_, stop, _) in enumerate(events)])
  share, active, last = collections.Counter(), set(), None
  for t, starts, i in edges:
    if active:
      for j in active:
        share[events[j][2]] += (t - last) / len(active)
    last = t
    if starts:
      active.add(i)
    else:
      active.discard(i)
  return share


def category(op_name: str, kind: str) -> str:
  direction = "backward" if "transpose(" in op_name else "forward"
  part = "other"
  for key, name in _PARTS:
    if re.search(rf"(^|/){re.escape(key)}(/|$)", op_name):
      part = name
      break
  # XLA names a fusion after its root: the norm's backward, with the input-gradient matmuls of the
  # layers it feeds inside.
  if part == "layer norm" and kind == "matmul":
    part = "norm+dx"
  return f"{direction:8s} {part:10s} {kind}"


def main():
  allocator.keep_freed_memory()  # as the launch scripts do; before JAX starts its threads
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--top", type=int, default=25)
  args = p.parse_args()
  shape = argparse.Namespace(vocab=512, heads=4, seq_len=512, rank=16, batch=8, d_model=256,
                             layers=4, d_ff=1024)
  setup, fn = bench.jax_setup(shape, "lora", shape.batch, shape.d_model, shape.layers, shape.d_ff)
  batch = bench.jax_batch(shape.batch, shape.seq_len, shape.vocab)
  state = setup.state
  for _ in range(3):
    state, metrics = fn(state, setup.frozen, batch)
  jax.block_until_ready(metrics)
  t = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = fn(state, setup.frozen, batch)
  jax.block_until_ready(metrics)
  print(f"step, untraced: {1e3 * (time.perf_counter() - t) / args.steps:.1f} ms")

  table = fusion_table(fn.lower(state, setup.frozen, batch).compile().as_text())
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(args.steps):
        state, metrics = fn(state, setup.frozen, batch)
      jax.block_until_ready(metrics)
    path = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
      trace = json.load(f)
  records = trace["traceEvents"] if isinstance(trace, dict) else trace
  events = [(e["ts"], e["ts"] + e["dur"], e["name"]) for e in records
            if e.get("ph") == "X" and "dur" in e and e["name"] in table]
  share = shared_times(events)
  per_step = lambda us: us / args.steps / 1e3
  print(f"traced ops, shared time: {per_step(sum(share.values())):.1f} ms a step\n")
  groups = collections.Counter()
  for name, us in share.items():
    groups[category(*table[name])] += us
  for name, us in groups.most_common():
    if per_step(us) >= 0.5:
      print(f"{per_step(us):8.1f} ms  {name}")
  print("(norm+dx: a layer norm's backward fused with the input gradients of the layers it feeds)")
  print(f"\ncostliest {args.top} ops (ms a step, op name from XLA's metadata):")
  for name, us in share.most_common(args.top):
    op_name, kind = table[name]
    print(f"{per_step(us):8.2f}  {name[:28]:28s} {kind[:4]:4s} {op_name[-80:]}")


if __name__ == "__main__":
  main()
