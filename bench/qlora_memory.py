"""QLoRA: what a quantised frozen base saves, what it costs in step time, and in validation loss.

  .venv/bin/python bench/qlora_memory.py --pack=style_packs/celtic_fiddle
  .venv/bin/python bench/qlora_memory.py --skip_real                  # memory and time only
  .venv/bin/python bench/qlora_memory.py --pack=... --skip_big --workdir=runs/qlora_real \
      --storages=nf4        # one row per process; a finished row in --workdir is reused

Four ways to store the frozen base: float32, bfloat16, int8 (per output channel; other leaves in
bfloat16) and NF4 (QLoRA's: 4-bit codes in blocks of 64, double-quantised scales; other leaves in
bfloat16). Compute is float32 in every case, so the rows differ only in the base's storage.

  1. At ~100M parameters (the music transformer at 8 layers, d=1024, d_ff=4096, vocab 512, LoRA
     rank 16 on every projection and feed-forward layer, batch 1 x 128 tokens): the resident bytes
     of the frozen base's arrays, the peak of one LoRA step from XLA's compiled memory analysis
     (arguments + outputs - aliased donations + temporaries, as bench/lora_step_bench.py counts
     it), and the step time (the median of `--steps` steps after a warm-up, in this process).
  2. A short real run per storage: the parent adapter of `--pack` (a style pack from
     launch/build_style_packs.py) over the shipped base (assets/base_model, 1M parameters; its
     README says what it read), `--real_steps` steps; the base's validation loss before
     training (row 0 of the run's metrics: what quantising alone does to a trained model) and the
     best validation loss after, in nats per token.
"""

import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lora_jax import allocator, atomic, families, quant  # noqa: E402
from lora_jax.train import config as config_lib  # noqa: E402
from lora_jax.train import mesh as mesh_lib  # noqa: E402
from lora_jax.train import state as state_lib  # noqa: E402
from lora_jax.train import step as step_lib  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CONFIG = os.path.join(ROOT, "configs", "music_lm.py")
BASE = os.path.join(ROOT, "assets", "base_model", "base_model.safetensors")
TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "ff.in", "ff.out")
# (row name, training.base_dtype, training.quantize)
STORAGES = (("float32", "float32", ""), ("bfloat16", "bfloat16", ""),
            ("int8", "bfloat16", "int8"), ("nf4", "bfloat16", "nf4"))


def big_step(args, base_dtype: str, kind: str) -> dict:
  """Base bytes, planned step memory and step time at the ~100M size, one device."""
  overrides = {
      "model.vocab_size": 512, "model.d_model": args.d_model, "model.n_heads": 16,
      "model.n_layers": args.layers, "model.d_ff": 4 * args.d_model,
      "model.max_len": args.seq_len, "model.seq_len": args.seq_len, "model.dropout": 0.0,
      "lora.rank": args.rank, "lora.alpha": 2.0 * args.rank, "lora.dropout": 0.0,
      "lora.target_modules": TARGETS, "data.batch_size": 1, "mesh.data": 1,
      "training.steps": 1000, "opt.warmup_steps": 0, "data.synthetic_examples": 64,
      "training.base_dtype": base_dtype, "training.quantize": kind}
  config = config_lib.load(CONFIG, None, overrides)
  family = families.lookup(config.family).make(config.model, config.training.precision)
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
  setup = state_lib.setup(config, family, mesh)
  fn = step_lib.jit_train_step(setup.step_config, mesh, setup.state_shardings,
                               setup.frozen_shardings)
  rng = np.random.default_rng(0)
  batch = {"tokens": rng.integers(0, 512, (1, 1, args.seq_len)).astype(np.int32),
           "mask": np.ones((1, 1, args.seq_len), np.float32)}
  m = fn.lower(setup.state, setup.frozen, batch).compile().memory_analysis()
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes)
  state = setup.state
  times = []
  for _ in range(args.steps + 1):  # the first compiles and warms up
    t = time.perf_counter()
    state, metrics = fn(state, setup.frozen, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  n_params = sum(x.size for x in jax.tree.leaves(state_lib.abstract_base(family)))
  out = {"base": quant.nbytes(setup.frozen.base), "peak": peak, "temp": m.temp_size_in_bytes,
         "step_s": statistics.median(times[1:]), "params": n_params,
         "loss": float(metrics["loss"])}
  del setup, fn, state
  gc.collect()
  return out


def real_run(args, base_dtype: str, kind: str, workdir: str) -> dict:
  """Row 0 and best validation loss of a parent adapter over the shipped base."""
  from lora_jax.data.style_packs import pack as style_pack
  from lora_jax.hierarchy import base_file, settings, training, windows
  from lora_jax.families import music_lm
  from lora_jax.train import loop
  defaults_path = os.path.join(ROOT, "configs", "lora_adapter_config.py")
  flags = {"parent.learning_rate": args.learning_rate} if args.learning_rate else {}
  config = settings.resolve(config_lib.load_config_dict(defaults_path), defaults_path,
                            args.parent_genre, None, flags)
  base = base_file.load_model(args.base)
  tokenizer = base_file.load_tokenizer(base.path, base.settings)
  pack = style_pack.load_style_pack(args.pack)
  split = lambda s: windows.split_windows([pack.path], s, tokenizer, config.data.seq_len,
                                          os.path.join(workdir, "cache"))
  train, val = split("train"), split("validation")
  model = music_lm.LmConfig(**dict(dataclasses.asdict(base.settings), dropout=0.0),
                            seq_len=config.data.seq_len,
                            pooled_targets=base_file.pooled_targets(tokenizer))
  level = dataclasses.replace(config.parent, epochs=1)
  tc = training._train_config(  # the hierarchy's own parent config, storage changed
      "qlora_" + (kind or base_dtype), model, training._adapter_spec(level), level, config.opt,
      config.run, train, val, full=False, base_params=base.path, parent_adapter="")
  tc = dataclasses.replace(tc, training=dataclasses.replace(
      tc.training, steps=args.real_steps, eval_every=args.real_steps // 4, base_dtype=base_dtype,
      quantize=kind), ckpt=dataclasses.replace(tc.ckpt, every_steps=args.real_steps))
  run_dir = os.path.join(workdir, kind or base_dtype)
  done = os.path.join(run_dir, "bench_row.json")
  if os.path.isfile(done):  # finished by an earlier run of this bench: its row as measured
    with open(done) as f:
      return json.load(f)
  t = time.perf_counter()
  result = loop.train(tc, run_dir)
  with open(os.path.join(run_dir, "metrics.csv")) as f:
    row0 = f.readlines()[1].split(",")
  row = {"base_val": float(row0[3]), "best_val": result.best_val_loss,
         "seconds": time.perf_counter() - t, "train_windows": train.n_windows,
         "val_windows": val.n_windows, "steps": result.step}
  if result.status != "stopped":  # finished or early-stopped: a row to reuse
    atomic.write_text(done, json.dumps(row))
  return row


def main():
  allocator.keep_freed_memory()
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--d_model", type=int, default=1024)
  p.add_argument("--seq_len", type=int, default=128)
  p.add_argument("--rank", type=int, default=16)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--pack", default="")
  p.add_argument("--parent_genre", default="celtic_fiddle")
  p.add_argument("--real_steps", type=int, default=120)
  p.add_argument("--base", default=BASE, help="Base model file of the real runs")
  p.add_argument("--learning_rate", type=float, default=0.0,
                 help="The real runs' peak learning rate; 0: the genre's own")
  p.add_argument("--skip_big", action="store_true")
  p.add_argument("--skip_real", action="store_true")
  p.add_argument("--storages", default=",".join(s[0] for s in STORAGES),
                 help="Real-run rows to run or reuse, of " + ", ".join(s[0] for s in STORAGES))
  p.add_argument("--workdir", default="",
                 help="Keep the real runs here (a finished one is reused); '' = a temporary dir")
  args = p.parse_args()
  print(f"machine: {os.cpu_count()} CPU cores; jax {jax.__version__} on "
        f"{jax.devices()[0].platform}")
  if not args.skip_big:
    rows = {name: big_step(args, dtype, kind) for name, dtype, kind in STORAGES}
    f32, bf16 = rows["float32"], rows["bfloat16"]
    print(f"\n~{f32['params'] / 1e6:.0f}M parameters ({args.layers} layers, d={args.d_model}), "
          f"LoRA rank {args.rank} on {', '.join(TARGETS)}, batch 1 x {args.seq_len} tokens, "
          f"float32 compute; step time: median of {args.steps} steps")
    print("| base storage | frozen base MiB | vs bfloat16 | LoRA step peak MiB | step s | "
          "vs float32 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
      print(f"| {name} | {r['base'] / 2**20:,.1f} | {r['base'] / bf16['base']:.2f} | "
            f"{r['peak'] / 2**20:,.0f} | {r['step_s']:.2f} | {r['step_s'] / f32['step_s']:.2f} |")
  if not args.skip_real:
    if not args.pack:
      raise SystemExit("--pack is needed for the real runs (or pass --skip_real)")
    chosen = args.storages.split(",")
    unknown = sorted(set(chosen) - {s[0] for s in STORAGES})
    if unknown:
      raise SystemExit(f"--storages {','.join(unknown)}: not one of "
                       f"{', '.join(s[0] for s in STORAGES)}")
    with tempfile.TemporaryDirectory() as tmp:
      workdir = os.path.abspath(args.workdir) if args.workdir else tmp
      real = {name: real_run(args, dtype, kind, workdir)
              for name, dtype, kind in STORAGES if name in chosen}
    first = next(iter(real.values()))
    print(f"\nreal run: {args.parent_genre} parent adapter over {args.base}, "
          f"{first['steps']} steps, {first['train_windows']} train / {first['val_windows']} "
          f"validation windows; validation loss in nats per token")
    print("| base storage | base before training | vs float32 | adapter, best | vs float32 | "
          "run s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    f = real.get("float32", {"base_val": float("nan"), "best_val": float("nan")})
    for name, r in real.items():
      print(f"| {name} | {r['base_val']:.4f} | {r['base_val'] - f['base_val']:+.4f} | "
            f"{r['best_val']:.4f} | {r['best_val'] - f['best_val']:+.4f} | {r['seconds']:.0f} |")


if __name__ == "__main__":
  main()
