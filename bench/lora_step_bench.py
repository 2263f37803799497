"""LoRA train-step throughput against PyTorch + PEFT, FLOP/s against the matmul peak, and memory.

  .venv/bin/python bench/lora_step_bench.py                 # 4 layers, d=256, T=512, batch 8, r=16
  .venv/bin/python bench/lora_step_bench.py --layers=2 --seq_len=256 --steps=5   # quicker
  .venv/bin/python bench/lora_step_bench.py --dtype=bfloat16 --skip_memory   # bfloat16 compute

--dtype=bfloat16 trains in bfloat16 compute with float32 adapters, optimiser state and base
(training.precision='bfloat16'), against PEFT under torch.autocast("cpu", dtype=torch.bfloat16);
the peak is then the best bfloat16 2048^3 matmul (jnp, torch, and the oneDNN kernel of
lora_jax.models.bf16_matmul where it is built), and two more things are measured: the same step
with the oneDNN dense products switched off (XLA's dot: the A/B), and the loss curve of a short
run on the music_lm family's synthetic Markov-chain tokens in bfloat16 against float32, same
data and seed (--loss_steps).

Everything is measured in this one run, in float32, on this machine's CPU, with the host malloc
set as the launch scripts set it (lora_jax.allocator: freed memory kept for the next step; it
applies to the torch step in this process too; LORA_JAX_MALLOC=default measures without it):
  1. the hardware matmul peak: the best of jnp, numpy and torch on a 2048^3 float32 matmul,
     measured in every round of item 3 and kept at its best;
  2. our LoRA train step (the project's own jitted step from lora_jax.train) in tokens/s;
  3. PyTorch + PEFT on the PyTorch twin of the same model: same rank, targets, batch, AdamW, and
     torch's fused scaled_dot_product_attention; tokens/s, and our ratio to it. The two are timed
     in alternating rounds and each keeps its best round, so drift in the machine's speed does
     not land on one side;
  4. achieved FLOP/s of our step, counted from the model's shapes (below), against the peak;
  5. peak memory of a LoRA step against full fine-tuning at ~110M parameters, batch 1, from XLA's
     compiled memory analysis (arguments + outputs + temporaries; aliased donations not counted
     twice), and the same for torch from resident-set growth.

FLOPs of one LoRA step (multiply-add = 2), counted as the work the model needs, not what a kernel
happens to do (the MFU convention): the forward's matmuls (projections, feed-forward, head, and
attention scores and values over the causal half of T x T: position i attends to i + 1 keys);
the backward's input gradients (the same again for every dense layer and the head, twice the
attention's: dP, dQ, dK and dV); the LoRA factors' forward and their gradients (dx, dA, dB: twice
their forward), less the first layer's q, k and v input gradients, which nothing needs: the
embeddings are frozen. No weight gradients of the frozen base: that is the point of LoRA.
Recomputation in the backward pass is not counted, and neither is the masked half of attention:
the causal kernel of lora_jax.models.attention computes 10 of 16 query-key blocks at T=512,
torch's fused kernel skips masked blocks too.
"""

import argparse
import gc
import os
import resource
import sys
import time

os.environ.setdefault("XLA_FLAGS", "")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lora_jax import allocator  # noqa: E402
from lora_jax import families  # noqa: E402
from lora_jax.families import music_lm  # noqa: E402
from lora_jax.models import bf16_dense  # noqa: E402
from lora_jax.models import bf16_matmul  # noqa: E402
from lora_jax.train import config as config_lib  # noqa: E402
from lora_jax.train import mesh as mesh_lib  # noqa: E402
from lora_jax.train import state as state_lib  # noqa: E402
from lora_jax.train import step as step_lib  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "music_lm.py")
TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "ff.in", "ff.out")


def matmul_peak(n: int = 2048, repeats: int = 5, dtype: str = "float32") -> dict[str, float]:
  """GFLOP/s of an n^3 matmul of `dtype` in jnp, numpy (float32 only), torch, and for bfloat16
  the oneDNN kernel where it is built (best of `repeats` each)."""
  a = np.random.default_rng(0).standard_normal((n, n), np.float32)
  flops = 2 * n ** 3
  out = {}
  ja = jnp.asarray(a, dtype)
  mm = jax.jit(lambda x: x @ x)
  mm(ja).block_until_ready()
  ta = torch.from_numpy(a).to(getattr(torch, dtype))
  runs = [("jnp", lambda: mm(ja).block_until_ready()), ("torch", lambda: ta @ ta)]
  if dtype == "float32":
    runs.append(("numpy", lambda: a @ a))
  elif bf16_dense.path_for(jnp.bfloat16) == "onednn_bf16":
    onednn_mm = jax.jit(lambda x: bf16_matmul.product(x, x))
    onednn_mm(ja).block_until_ready()
    runs.append(("onednn_ffi", lambda: onednn_mm(ja).block_until_ready()))
  for name, fn in runs:
    fn()
    best = min(_timed(fn) for _ in range(repeats))
    out[name] = flops / best / 1e9
  return out


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def step_flops(layers: int, d: int, d_ff: int, vocab: int, t: int, batch: int, rank: int) -> float:
  """Counted FLOPs of one LoRA train step (see the module docstring)."""
  tokens = batch * t
  dense = layers * (2 * 4 * d * d + 2 * 2 * d * d_ff) + 2 * d * vocab  # per token
  attention = layers * 2 * 2 * d * (t + 1) / 2  # QK^T and PV over the causal keys, mean per token
  lora_shapes = [(d, d)] * 4 + [(d, d_ff), (d_ff, d)]
  lora = layers * sum(2 * rank * (i + o) for i, o in lora_shapes)
  # The first layer's q, k and v need no input gradient (base and LoRA): the embeddings below
  # them are frozen, so neither XLA nor torch's autograd computes it.
  first_layer_inputs = 3 * (2 * d * d + 2 * rank * d)
  forward = dense + attention + lora
  backward = dense + 2 * attention + 2 * lora - first_layer_inputs
  return tokens * (forward + backward)


def jax_setup(args, training_type: str, batch: int, d: int, layers: int, d_ff: int):
  overrides = {
      "model.vocab_size": args.vocab, "model.d_model": d, "model.n_heads": args.heads,
      "model.n_layers": layers, "model.d_ff": d_ff, "model.max_len": args.seq_len,
      "model.seq_len": args.seq_len, "model.dropout": 0.0, "lora.rank": args.rank,
      "lora.alpha": 2.0 * args.rank, "lora.dropout": 0.0, "lora.target_modules": TARGETS,
      "data.batch_size": batch, "training.type": training_type, "mesh.data": 1,
      "training.steps": 1000, "opt.warmup_steps": 0, "opt.clip_norm": 0.0,
      "data.synthetic_examples": 64,  # unused here: the bench feeds its own batches
      "training.precision": args.dtype,
  }
  config = config_lib.load(CONFIG, None, overrides)
  family = families.lookup(config.family).make(config.model, config.training.precision)
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
  setup = state_lib.setup(config, family, mesh)
  fn = step_lib.jit_train_step(setup.step_config, mesh, setup.state_shardings,
                               setup.frozen_shardings)
  return setup, fn


def jax_batch(batch: int, t: int, vocab: int) -> dict:
  rng = np.random.default_rng(0)
  return {"tokens": rng.integers(0, vocab, (1, batch, t)).astype(np.int32),
          "mask": np.ones((1, batch, t), np.float32)}


def jax_stepper(args, onednn: bool = True):
  """A function that runs `args.steps` of our LoRA step and returns the seconds they took;
  `onednn` False traces the bfloat16 dense products as XLA's dot (the A/B)."""
  setup, fn = jax_setup(args, "lora", args.batch, args.d_model, args.layers, args.d_ff)
  batch = jax_batch(args.batch, args.seq_len, args.vocab)
  holder = {"state": setup.state}
  bf16_dense.USE_ONEDNN = onednn  # read at trace time, so this step keeps it once compiled
  try:
    hlo = fn.lower(setup.state, setup.frozen, batch).as_text()
    # Compiles now: a fresh jit per setup, so each setting keeps its own program.
    holder["state"], _ = fn(holder["state"], setup.frozen, batch)
  finally:
    bf16_dense.USE_ONEDNN = True
  calls = hlo.count(bf16_matmul.onednn.TARGET)
  print(f"  lora_jax step{'' if onednn else ' (oneDNN off)'}: {calls} oneDNN product calls "
        "in its program")

  def run() -> float:
    t = time.perf_counter()
    for _ in range(args.steps):
      holder["state"], metrics = fn(holder["state"], setup.frozen, batch)
    jax.block_until_ready(metrics)
    return time.perf_counter() - t

  run()  # compile and warm up
  return run


def peft_stepper(args):
  """The same for PyTorch + PEFT on the PyTorch twin of the model."""
  import peft
  from lora_jax.models.transformer import TransformerConfig
  from third_party.music_transformer_torch import MusicTransformer
  config = TransformerConfig(vocab_size=args.vocab, d_model=args.d_model, n_heads=args.heads,
                             n_layers=args.layers, d_ff=args.d_ff, max_len=args.seq_len,
                             dropout=0.0)
  torch.manual_seed(0)
  model = peft.get_peft_model(MusicTransformer(config), peft.LoraConfig(
      r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules=list(TARGETS)))
  model.train()
  autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
  opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3,
                          weight_decay=0.01)
  x = torch.randint(0, args.vocab, (args.batch, args.seq_len))

  def step():
    with autocast():
      logits = model(x)
      loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, args.vocab).float(),
                                               x[:, 1:].reshape(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

  def run() -> float:
    t = time.perf_counter()
    for _ in range(args.steps):
      step()
    return time.perf_counter() - t

  run()  # warm up
  return run


def interleaved_tokens_per_s(args) -> tuple[dict[str, float], dict[str, float]]:
  """Best tokens/s of each framework, and the best matmul peak, over `args.rounds` rounds.

  This machine's speed drifts by 20% or more over minutes (other tenants of the host): timing one
  framework after the other, or the peak once at the start, would fold that drift into the ratios;
  each round runs all three in turn, and each keeps its best round.
  """
  runners = {"jax": jax_stepper(args), "peft": peft_stepper(args)}
  if args.dtype == "bfloat16" and bf16_dense.path_for(jnp.bfloat16) == "onednn_bf16":
    runners["jax_xla_dot"] = jax_stepper(args, onednn=False)
  best = {name: float("inf") for name in runners}
  peak = {}
  for _ in range(args.rounds):
    for name, run in runners.items():
      best[name] = min(best[name], run())
    for name, gflops in matmul_peak(repeats=2, dtype=args.dtype).items():
      peak[name] = max(peak.get(name, 0.0), gflops)
  tokens = args.steps * args.batch * args.seq_len
  return {name: tokens / seconds for name, seconds in best.items()}, peak


def loss_curves(args) -> dict[str, list[float]]:
  """Training loss per step of the bench model in float32 and bfloat16 compute: same seed, same
  batches of the music_lm family's synthetic Markov-chain tokens, the project's own step."""
  curves = {}
  for dtype in ("float32", "bfloat16"):
    run_args = argparse.Namespace(**{**vars(args), "dtype": dtype})
    setup, fn = jax_setup(run_args, "lora", args.batch, args.d_model, args.layers, args.d_ff)
    shape = argparse.Namespace(vocab_size=args.vocab, seq_len=args.seq_len)  # what it reads
    data = music_lm.synthetic(shape, args.loss_steps * args.batch, seed=0)
    state, losses = setup.state, []
    for i in range(args.loss_steps):
      rows = slice(i * args.batch, (i + 1) * args.batch)
      batch = {k: v[None, rows] for k, v in data.items()}
      state, metrics = fn(state, setup.frozen, batch)
      losses.append(float(metrics["loss"]))
    curves[dtype] = losses
  return curves


def jax_step_memory(args, training_type: str) -> float:
  """Bytes XLA plans for one step at the memory size: live arguments, outputs and temporaries."""
  setup, fn = jax_setup(args, training_type, 1, args.mem_d_model, args.mem_layers,
                        4 * args.mem_d_model)
  batch = jax_batch(1, args.mem_seq_len, args.vocab)
  compiled = fn.lower(setup.state, setup.frozen, batch).compile()
  m = compiled.memory_analysis()
  n_params = sum(x.size for x in jax.tree.leaves(setup.frozen.base or setup.state.params))
  total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes \
      + m.temp_size_in_bytes
  del setup, fn, compiled
  gc.collect()
  return total, n_params


def main():
  kept = allocator.keep_freed_memory()  # as the launch scripts do; before JAX starts its threads
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--d_model", type=int, default=256)
  p.add_argument("--d_ff", type=int, default=1024)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--vocab", type=int, default=512)
  p.add_argument("--seq_len", type=int, default=512)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--rank", type=int, default=16)
  p.add_argument("--steps", type=int, default=5)  # per timed round
  p.add_argument("--rounds", type=int, default=4)  # alternating jax / torch rounds; best of each
  p.add_argument("--mem_layers", type=int, default=8)
  p.add_argument("--mem_d_model", type=int, default=1024)
  p.add_argument("--mem_seq_len", type=int, default=128)
  p.add_argument("--skip_memory", action="store_true")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--loss_steps", type=int, default=60)  # bfloat16 only; 0 skips the loss curves
  args = p.parse_args()
  torch.set_num_threads(os.cpu_count() or 1)

  print(f"machine: {os.cpu_count()} CPU cores; jax {jax.__version__} on "
        f"{jax.devices()[0].platform}; torch {torch.__version__}")
  print(f"host malloc keeps freed memory (lora_jax.allocator, for both steps): "
        f"{'yes' if kept else 'no'}")
  print(f"model: {args.layers} layers, d={args.d_model}, d_ff={args.d_ff}, vocab={args.vocab}, "
        f"T={args.seq_len}, batch {args.batch}, LoRA rank {args.rank} on {', '.join(TARGETS)}")
  print(f"compute dtype: {args.dtype}"
        + (" (float32 adapters, optimiser state and base; PEFT under torch.autocast bfloat16)"
           if args.dtype == "bfloat16" else ""))
  print(f"load before timing (uptime): {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
        f"{os.getloadavg()[2]:.2f}")
  tps, peak = interleaved_tokens_per_s(args)
  jax_tps, peft_tps = tps["jax"], tps["peft"]
  best_name = max(peak, key=peak.get)
  print(f"{args.dtype} matmul 2048^3, best of the rounds, GFLOP/s: "
        + ", ".join(f"{k} {v:.1f}" for k, v in peak.items())
        + f"  -> peak {peak[best_name]:.1f} ({best_name})")
  flops = step_flops(args.layers, args.d_model, args.d_ff, args.vocab, args.seq_len, args.batch,
                     args.rank)
  achieved = flops * jax_tps / (args.batch * args.seq_len) / 1e9
  print(f"lora_jax LoRA step: {jax_tps:,.0f} tokens/s")
  print(f"PyTorch + PEFT:     {peft_tps:,.0f} tokens/s")
  print(f"ratio lora_jax / PEFT: {jax_tps / peft_tps:.2f}x")
  if "jax_xla_dot" in tps:
    print(f"lora_jax with XLA's dot instead of oneDNN: {tps['jax_xla_dot']:,.0f} tokens/s "
          f"(oneDNN / XLA dot: {jax_tps / tps['jax_xla_dot']:.2f}x)")
  print(f"lora_jax achieved {achieved:.1f} GFLOP/s = {100 * achieved / peak[best_name]:.0f}% of "
        f"the measured peak ({flops / 1e9:.1f} GFLOP counted per step)")
  if not args.skip_memory:
    lora_bytes, n = jax_step_memory(args, "lora")
    full_bytes, _ = jax_step_memory(args, "full")
    print(f"memory at {n / 1e6:.0f}M parameters ({args.mem_layers} layers, d={args.mem_d_model}), "
          f"batch 1, T={args.mem_seq_len}: LoRA step {lora_bytes / 2**20:,.0f} MiB, full "
          f"fine-tuning {full_bytes / 2**20:,.0f} MiB -> LoRA/full = "
          f"{100 * lora_bytes / full_bytes:.0f}%")
  if args.dtype == "bfloat16" and args.loss_steps:
    curves = loss_curves(args)
    f32, bf16 = curves["float32"], curves["bfloat16"]
    print(f"loss curve, {args.loss_steps} LoRA steps on synthetic Markov-chain tokens, batch "
          f"{args.batch}, same seed and data:")
    print("  step  float32  bfloat16")
    for i in sorted({0, *range(9, len(f32), 10), len(f32) - 1}):
      print(f"  {i + 1:4d}  {f32[i]:7.4f}  {bf16[i]:8.4f}")
    gap = max(abs(a - b) for a, b in zip(f32, bf16))
    print(f"  largest |float32 - bfloat16| over the run: {gap:.4f}")
  print(f"load after (uptime): {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
        f"{os.getloadavg()[2]:.2f}")
  print(f"max resident set of this process: "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:,.0f} MiB")


if __name__ == "__main__":
  main()
