"""The training step at 100M, 1B and 8B parameters on 8 and 64 devices, compiled, never run.

    python bench/scale_plan.py                       # every size, mode and mesh (minutes)
    python bench/scale_plan.py --sizes=100M --devices=8 --modes=lora

Each devices count runs in a child process with that many fake CPU devices
(`--xla_force_host_platform_device_count`). There the music transformer's LoRA step (bfloat16
compute, the frozen base stored in bfloat16, float32 adapters and AdamW moments) and its full
fine-tuning step (float32 weights and moments, bfloat16 compute) are built from abstract arrays
(no weights exist), sharded by the family's partition rules over an fsdp mesh, lowered and
compiled by XLA. Printed per case: per-device memory XLA plans (arguments + outputs - aliased +
temporaries), the collectives in the compiled HLO with their bytes per step, the compiled FLOPs
per device, and, for a stated accelerator, the step time those imply (compute at peak, and
collectives at the link bandwidth, overlapped or not) and so the MFU bound.

Depth is extrapolated: the model unrolls its layers, so compile time grows with depth; each
case compiles the same model at PROBE_LAYERS depths and extends every figure linearly to the real
depth (per layer: the difference between the two, divided by their layer gap). Memory, FLOPs and
collectives are sums over identical layers plus the embedding, head and optimiser, so the line is
exact up to XLA choosing differently at another depth.

`--modes=merge` compiles the adapter merge instead (`lora_jax/lora/sharded_merge.py`): a
rank-16 adapter on every q/k/v/out/ff.in/ff.out kernel folded into the fsdp-sharded base at full
depth (no extrapolation), each device its own blocks; it prints the planned memory against the
base shard, the collectives (an exit if any moves an array as large as a kernel's shard), and the
time reading and writing the shard at the accelerator's HBM bandwidth implies.

What this is and is not: XLA:CPU's plan for the same sharded program, not a GPU's or a TPU's
(their compilers fuse and schedule differently, and keep different temporaries); no step ran.

Attention is the project's blockwise jnp kernel (`causal_attention`) in one chunk: it keeps flash
attention's residuals (q, k, v, the output and the log-sum-exp), as cuDNN's and the Pallas kernel
do, so its memory stands in for theirs; XLA's reference attention would plan [B, H, T, T] scores
no accelerator path keeps. (Its usual CPU chunks sliced the global batch and, on a batch-split
mesh, moved every row's q, k and v to one device: the first run of this plan counted that. Train
steps now run it per device on the device's own rows, `attention.batch_split`.)

Two causes of the first run's figures (14.3 GiB a device at 100M LoRA), both mended: the chunked
CPU attention above, and XLA's sharding propagation choosing to all-gather [batch, 2048, 3072]
activations instead of FSDP's weight shards (`lora_jax/train/activation_sharding.py`, which
every train step now applies). At 2 layers on 8 devices: temporaries 3.7 -> 0.9 GB, 463 -> 161
GFLOP per device (the model needs 135 plus attention), all-reduces 750 MB -> 0.15 MB.
"""

import argparse
import json
import os
import re
import subprocess
import sys

SIZES = {  # name: (d_model, n_layers, d_ff, n_heads)
    "100M": (768, 12, 3072, 12),
    "1B": (2048, 20, 8192, 16),
    "8B": (4096, 40, 16384, 32),
}
ACCELERATORS = {  # name: (bf16 dense FLOP/s, HBM bytes/s, link bytes/s per device, memory bytes)
    "H100": (989e12, 3.35e12, 450e9, 80e9),
    "TPU v5e": (197e12, 819e9, 200e9, 16e9),
}
PROBE_LAYERS = (2, 4)
SEQ_LEN = 2048
VOCAB = 512  # the MIDI event vocabulary
MERGE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "ff.in", "ff.out")
_COLLECTIVE = re.compile(
    r"= (\(?[^=]*?\)?) (all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)"
    r"(-start)?\(")
_SHAPE = re.compile(r"(bf16|f16|f32|f64|s32|u32|s8|u8|pred)\[([0-9,]*)\]")
_BYTES = {"bf16": 2, "f16": 2, "f32": 4, "f64": 8, "s32": 4, "u32": 4, "s8": 1, "u8": 1,
          "pred": 1}


def _shape_bytes(text: str) -> int:
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * _BYTES[dtype]
  return total


def collectives(hlo: str) -> dict[str, list[int]]:
  """{kind: [count, bytes of their results]} over the compiled HLO's collectives."""
  out: dict[str, list[int]] = {}
  for result, kind, _ in _COLLECTIVE.findall(hlo):
    entry = out.setdefault(kind, [0, 0])
    entry[0] += 1
    entry[1] += _shape_bytes(result)
  return out


def compile_case(size: str, mode: str, n_devices: int, layers: int) -> dict:
  """Build, lower and compile one train step on this process's fake devices; its figures."""
  import jax  # pylint: disable=g-import-not-at-top; XLA_FLAGS must be set first
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from lora_jax import families, lora  # pylint: disable=g-import-not-at-top
  from lora_jax.models import attention  # pylint: disable=g-import-not-at-top
  from lora_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from lora_jax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from lora_jax.train import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
  from lora_jax.train import precision  # pylint: disable=g-import-not-at-top
  from lora_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from lora_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  attention.PAIRS_PER_CHUNK = 1 << 30  # one chunk: see the module docstring
  d, _, d_ff, heads = SIZES[size]
  full = mode == "full"
  config = config_lib.load("configs/music_lm.py", None, {
      "model.vocab_size": VOCAB, "model.d_model": d, "model.n_layers": layers,
      "model.d_ff": d_ff, "model.n_heads": heads, "model.max_len": SEQ_LEN,
      "model.seq_len": SEQ_LEN, "model.dropout": 0.0, "lora.rank": 16, "lora.dropout": 0.0,
      "lora.target_modules": ("q_proj", "k_proj", "v_proj", "out_proj", "ff.in", "ff.out"),
      "training.type": mode, "training.precision": "bfloat16",
      "training.base_dtype": "float32" if full else "bfloat16",
      "mesh.data": 1, "mesh.fsdp": -1, "data.synthetic_examples": 1,
      "data.batch_size": n_devices, "data.eval_batch_size": n_devices})
  pol = precision.policy(config.training.precision, config.training.base_dtype)
  family = families.lookup(config.family).make(config.model, pol.compute_dtype)
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:n_devices])
  rep = mesh_lib.replicated(mesh)
  abstract = state_lib.abstract_base(family)
  n_params = sum(x.size for x in jax.tree.leaves(abstract))
  base_sh = mesh_lib.param_shardings(family.partition_rules, abstract, mesh)
  if full:
    trainable = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), abstract)
    trainable_sh, targets = base_sh, ()
  else:
    targets = lora.resolve(config.lora, abstract)
    trainable = lora.abstract_params(targets, jnp.float32)
    trainable_sh = lora.shardings(targets, base_sh)
  tx, sched = optimizer_lib.optimizer(config.opt, config.training.steps, trainable)
  opt_sh = mesh_lib.like_params(jax.eval_shape(tx.init, trainable), trainable, trainable_sh, mesh)
  state_sh = state_lib.TrainState(rep, trainable_sh, opt_sh, rep,
                                  precision.LossScale(rep, rep), rep, rep)

  def init_state(params):
    zero = jnp.zeros((), jnp.int32)
    return state_lib.TrainState(zero, params, tx.init(params), jnp.zeros((2,), jnp.uint32),
                                precision.LossScale.create(pol.dynamic_loss_scale), zero, zero)

  with_sharding = lambda tree, sh: jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sh)
  abstract_state = with_sharding(jax.eval_shape(init_state, trainable), state_sh)
  if full:
    frozen, frozen_sh = state_lib.Frozen(None, None, ()), state_lib.Frozen(None, None, ())
  else:
    scales = jax.eval_shape(lambda: lora.scales_of(targets))
    base = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16), abstract)
    frozen_sh = state_lib.Frozen(base_sh, jax.tree.map(lambda _: rep, scales), ())
    frozen = with_sharding(state_lib.Frozen(base, scales, ()), frozen_sh)
  step_config = step_lib.StepConfig(
      family=family, tx=tx, schedule=sched, dynamic_loss_scale=pol.dynamic_loss_scale,
      trains_base=full, lora_dropout=0.0, lora_module_dropout=0.0)
  batch = with_sharding(family.abstract_batch(1, n_devices),
                        jax.tree.map(lambda _: mesh_lib.batch_sharding(mesh, 1),
                                     family.abstract_batch(1, n_devices)))
  fn = step_lib.jit_train_step(step_config, mesh, state_sh, frozen_sh)
  compiled = fn.lower(abstract_state, frozen, batch).compile()
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  planned = (memory.argument_size_in_bytes + memory.output_size_in_bytes
             - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  tokens = n_devices * SEQ_LEN
  return {"size": size, "mode": mode, "devices": n_devices, "params": int(n_params),
          "mesh": dict(mesh.shape), "tokens_per_step": tokens,
          "memory_per_device": {"arguments": memory.argument_size_in_bytes,
                                "outputs": memory.output_size_in_bytes,
                                "aliased": memory.alias_size_in_bytes,
                                "temporaries": memory.temp_size_in_bytes,
                                "planned": planned},
          "flops_per_device": float(cost.get("flops", 0.0)),
          "model_flops_per_device": (6 if full else 4) * n_params * tokens / n_devices,
          "collectives": collectives(compiled.as_text())}


def compile_merge(size: str, n_devices: int, dtype: str) -> dict:
  """Lower and compile the sharded merge (`lora.sharded_merge`) of a rank-16 adapter on every
  q/k/v/out/ff.in/ff.out kernel into a `dtype` base at full depth; its figures, never run."""
  import jax  # pylint: disable=g-import-not-at-top; XLA_FLAGS must be set first
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from lora_jax import families, lora, tree_paths  # pylint: disable=g-import-not-at-top
  from lora_jax.lora import sharded_merge  # pylint: disable=g-import-not-at-top
  from lora_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from lora_jax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from lora_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top

  d, layers, d_ff, heads = SIZES[size]
  config = config_lib.load("configs/music_lm.py", None, {
      "model.vocab_size": VOCAB, "model.d_model": d, "model.n_layers": layers,
      "model.d_ff": d_ff, "model.n_heads": heads, "model.max_len": SEQ_LEN,
      "model.seq_len": SEQ_LEN, "lora.rank": 16,
      "lora.target_modules": MERGE_TARGETS, "mesh.data": 1, "mesh.fsdp": -1,
      "data.synthetic_examples": 1, "data.batch_size": n_devices,
      "data.eval_batch_size": n_devices})
  family = families.lookup(config.family).make(config.model, jnp.float32)
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:n_devices])
  abstract = state_lib.abstract_base(family)
  base_sh = mesh_lib.param_shardings(family.partition_rules, abstract, mesh)
  targets = lora.resolve(config.lora, abstract)
  with_sharding = lambda tree, sh: jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sh)
  base = with_sharding(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), abstract),
                       base_sh)
  rep = mesh_lib.replicated(mesh)
  scales = jax.eval_shape(lambda: lora.scales_of(targets))
  adapter = lora.Adapter(
      with_sharding(lora.abstract_params(targets, jnp.float32), lora.shardings(targets, base_sh)),
      with_sharding(scales, jax.tree.map(lambda _: rep, scales)))
  weights = jax.ShapeDtypeStruct((1,), jnp.float32, sharding=rep)
  compiled = sharded_merge.jit_merge(base_sh, [adapter]).lower(base, [adapter], weights).compile()
  memory = compiled.memory_analysis()
  hlo = compiled.as_text()
  flat = tree_paths.flatten(base)
  kernel_shapes = {tuple(x.shape) for keys, x in flat.items() if keys[-1] == "kernel"}
  return {"size": size, "mode": f"merge ({dtype} base)", "devices": n_devices,
          "params": int(sum(x.size for x in flat.values())), "layers": layers,
          "mesh": dict(mesh.shape),
          "base_bytes": int(sum(x.size * x.dtype.itemsize for x in flat.values())),
          "kernels_folded": len(targets),
          "memory_per_device": {"arguments": memory.argument_size_in_bytes,
                                "outputs": memory.output_size_in_bytes,
                                "aliased": memory.alias_size_in_bytes,
                                "temporaries": memory.temp_size_in_bytes,
                                "planned": (memory.argument_size_in_bytes
                                            + memory.output_size_in_bytes
                                            - memory.alias_size_in_bytes
                                            + memory.temp_size_in_bytes)},
          "collectives": collectives(hlo),
          "kernel_sized_collectives": kernel_sized_collectives(hlo, kernel_shapes, n_devices)}


def kernel_sized_collectives(hlo: str, kernel_shapes: set, n_devices: int) -> int:
  """How many collectives in `hlo` move a whole kernel, or any array as large as one device's
  shard of the smallest kernel: a gather of a kernel, however it is split."""
  smallest = min(a * b for a, b in kernel_shapes) // n_devices
  count = 0
  for result, _, _ in _COLLECTIVE.findall(hlo):
    for _, dims in _SHAPE.findall(result):
      n = 1
      for d in filter(None, dims.split(",")):
        n *= int(d)
      count += n >= smallest
  return count


def implied(row: dict, accelerator: str) -> dict:
  """Step time the figures imply on `accelerator`, and the MFU bound."""
  peak, _, link, capacity = ACCELERATORS[accelerator]
  compute = row["flops_per_device"] / peak
  comm = sum(b for _, b in row["collectives"].values()) / link
  overlapped, serial = max(compute, comm), compute + comm
  useful = row["model_flops_per_device"] / peak
  return {"compute_s": compute, "collectives_s": comm,
          "step_s_overlapped": overlapped, "step_s_serial": serial,
          "mfu_bound": useful / overlapped if overlapped else 0.0,
          "fits": row["memory_per_device"]["planned"] <= capacity,
          "fits_with_remat": row["planned_with_remat_estimate"] <= capacity}


def _extrapolate(low: dict, high: dict, layers: int) -> dict:
  """`high` with every number extended linearly in depth through `low` to `layers` layers."""
  gap = PROBE_LAYERS[1] - PROBE_LAYERS[0]

  def line(a, b):
    if isinstance(b, dict):
      return {k: line(a.get(k, 0 if not isinstance(v, (dict, list)) else type(v)()), v)
              for k, v in b.items()}
    if isinstance(b, list):
      a = a or [0] * len(b)
      return [line(x, y) for x, y in zip(a, b)]
    if isinstance(b, (int, float)) and not isinstance(b, bool):
      value = b + (b - a) * (layers - PROBE_LAYERS[1]) / gap
      return type(b)(round(value)) if isinstance(b, int) else value
    return b

  out = {k: line(low[k], v) for k, v in high.items()
         if k in ("params", "memory_per_device", "flops_per_device", "model_flops_per_device",
                  "collectives")}
  return {**high, **out, "layers": layers, "probed_layers": list(PROBE_LAYERS)}


def remat_estimate(low: dict, row: dict) -> int:
  """Bytes a device would plan with every block rematerialised (`model.remat`), estimated.

  XLA:CPU does not honour jax.checkpoint in an unrolled model (the compiled HLO keeps no
  optimisation barrier, and a 16-layer MLP plans the same temporaries with and without it), so
  this is not compiled: it is the compiled `low`-layer plan's temporaries (every activation of
  those layers kept) plus, for each further layer, only what remat keeps of it, the block's
  input: one [tokens a device, d_model] bfloat16 residual. Checked against a compiler that does
  honour it (a scanned 16-layer MLP, where remat is JAX's own doing): the formula said 155 MB,
  XLA:CPU planned 177 (the estimate runs ~12% low).
  """
  memory = row["memory_per_device"]
  carry = row["tokens_per_step"] // row["devices"] * SIZES[row["size"]][0] * 2
  temporaries = low["memory_per_device"]["temporaries"] + (row["layers"] - PROBE_LAYERS[0]) * carry
  return memory["arguments"] + memory["outputs"] - memory["aliased"] + temporaries


def _child(args) -> None:
  for size in args.sizes.split(","):
    for mode in args.modes.split(","):
      if mode == "merge":
        print(json.dumps(compile_merge(size, args.child, args.merge_dtype)), flush=True)
        continue
      low, high = (compile_case(size, mode, args.child, n) for n in PROBE_LAYERS)
      row = _extrapolate(low, high, SIZES[size][1])
      row["planned_with_remat_estimate"] = remat_estimate(low, row)
      print(json.dumps(row), flush=True)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--sizes", default="100M,1B,8B")
  parser.add_argument("--devices", default="8,64")
  parser.add_argument("--modes", default="lora,full",
                      help="lora, full (train steps) and merge (the sharded adapter merge)")
  parser.add_argument("--merge_dtype", default="float32", choices=("float32", "bfloat16"),
                      help="the base's dtype in the merge")
  parser.add_argument("--accelerator", default="H100", choices=sorted(ACCELERATORS))
  parser.add_argument("--out", default="", help="write every row as JSON here")
  parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    _child(args)
    return
  rows = []
  for n in map(int, args.devices.split(",")):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
               JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, __file__, f"--child={n}", f"--sizes={args.sizes}",
                           f"--modes={args.modes}", f"--merge_dtype={args.merge_dtype}"],
                          env=env, capture_output=True, text=True)
    if done.returncode:
      sys.exit(f"scale_plan: the {n}-device child failed:\n{done.stderr[-3000:]}")
    rows += [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
  gib = lambda b: b / 2**30
  merges = [row for row in rows if row["mode"].startswith("merge")]
  rows = [row for row in rows if not row["mode"].startswith("merge")]
  if merges:
    _print_merges(merges, args.accelerator)
  if not rows:
    _write(args.out, merges)
    return
  print(f"accelerator model: {args.accelerator} "
        f"(bf16 {ACCELERATORS[args.accelerator][0] / 1e12:.0f} TFLOP/s, link "
        f"{ACCELERATORS[args.accelerator][2] / 1e9:.0f} GB/s, "
        f"{ACCELERATORS[args.accelerator][3] / 1e9:.0f} GB); XLA:CPU's compiled plan, not run")
  print("| size | mode | devices | params | GiB/device planned | with remat, estimated | "
        "collectives (count, GiB) | TFLOP/device | step s (overlap / serial) | MFU bound | fits (with remat) |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for row in rows:
    t = implied(row, args.accelerator)
    coll = ", ".join(f"{k} {c} ({gib(b):.2f})" for k, (c, b) in sorted(row["collectives"].items()))
    print(f"| {row['size']} | {row['mode']} | {row['devices']} | {row['params'] / 1e9:.2f}B | "
          f"{gib(row['memory_per_device']['planned']):.1f} | "
          f"{gib(row['planned_with_remat_estimate']):.1f} | {coll or 'none'} | "
          f"{row['flops_per_device'] / 1e12:.1f} | {t['step_s_overlapped']:.3f} / "
          f"{t['step_s_serial']:.3f} | {t['mfu_bound']:.0%} | {'yes' if t['fits'] else 'no'} ({'yes' if t['fits_with_remat'] else 'no'}) |")
    row["implied"] = {name: implied(row, name) for name in ACCELERATORS}
  _write(args.out, merges + rows)


def _write(path: str, rows: list) -> None:
  if path:
    with open(path, "w") as f:
      json.dump(rows, f, indent=1)


def _print_merges(rows: list, accelerator: str) -> None:
  """The sharded merge's table: memory against the base shard, collectives, HBM-bound time."""
  gib = lambda b: b / 2**30
  hbm = ACCELERATORS[accelerator][1]
  print(f"sharded merge, rank-16 adapter on every q/k/v/out/ff.in/ff.out kernel; XLA:CPU's "
        f"compiled plan, not run; time at {accelerator} HBM {hbm / 1e12:.2f} TB/s")
  print("| size | base | devices | base GiB | GiB/device: base shard | adapter factors | "
        "temporaries | planned | planned / base shard | collectives (kernel-sized) | "
        "implied s |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for row in rows:
    m = row["memory_per_device"]
    shard = m["outputs"]  # every output is a base leaf, sharded as it came in
    coll = ", ".join(f"{k} {c}" for k, (c, _) in sorted(row["collectives"].items())) or "none"
    print(f"| {row['size']} | {row['mode'][len('merge ('):-len(' base)')]} | {row['devices']} | "
          f"{gib(row['base_bytes']):.1f} | {gib(shard):.3f} | "
          f"{gib(m['arguments'] - shard):.3f} | {gib(m['temporaries']):.3f} | "
          f"{gib(m['planned']):.3f} | {m['planned'] / shard:.3f} | {coll} "
          f"({row['kernel_sized_collectives']}) | {(m['arguments'] + m['outputs']) / hbm:.4f} |")
  gathered = [f"{r['size']} on {r['devices']}" for r in rows if r["kernel_sized_collectives"]]
  if gathered:
    sys.exit(f"scale_plan: the sharded merge moves kernel-sized arrays between devices at "
             f"{', '.join(gathered)}")


if __name__ == "__main__":
  main()
