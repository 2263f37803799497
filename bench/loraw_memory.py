"""LoRAW: memory and speed of LoRA training against full fine-tuning of the DiT, where weights dominate.

  nice -n 5 .venv/bin/python bench/loraw_memory.py                    # depth 4 at SAO's width
  nice -n 5 .venv/bin/python bench/loraw_memory.py --depth=2 --steps=3 --skip_torch   # quicker

Stable Audio Open's DiT (configs/dit.py: 1536 wide, 24 heads, 64 latent channels, 768-wide
conditioning tokens, 128 prompt tokens) at `--depth` layers instead of 24, trained by the dit
family on the shared step (lora_jax.train.step, as the loop runs it), batch `--batch` x 22 latent
frames (1 s). At that size the weights and the optimiser state are gigabytes and the activations
tens of megabytes, so the comparison is about what each arm keeps per weight.

Arms: full fine-tuning (every parameter, Adam) and LoRA with LoRAW's whitelist `transformer`
(every linear layer under `transformer.`, rank `--rank`, Adam on the factors), in float32 and with
bfloat16 compute (float32 master weights; for LoRA also with the frozen base stored in bfloat16).
Each arm runs in a fresh child process, so its peak resident set (ru_maxrss) is its own; the
child also reports XLA's planned memory of the compiled step (arguments + outputs - aliased
donations + temporaries, as bench/lora_step_bench.py counts it), the trainable parameters, the
bytes of the optimiser state, and the median step time of `--steps` steps after the compiling one.

The PyTorch peer (`--skip_torch` to leave it out): stable-audio-tools 0.0.19's own
DiffusionTransformer at the same size, fed the same shapes (the 130 conditioning tokens and the
global embedding our conditioners would make, given directly), the v-objective's MSE, Adam; LoRA
by PEFT on the same linear layers (those under `transformer.`), full fine-tuning on every
parameter; float32 on torch's CPU backend, also each in its own child process. Our conditioners
(the byte-token prompt embedding, the number conditioners) train in our full arm and are absent
from torch's: a few million parameters, said in the table.

Last, on paper: Stable Audio Open's real DiT (24 layers), its parameter tree built abstractly
(jax.eval_shape of the dit family's model, as tests/loraw_config_test.py does), LoRAW's whitelist
resolved on it (170 layers), and the bytes of weights, gradients and Adam's two moments for LoRA
and for full fine-tuning with float32 or bfloat16 weights.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
CONFIG = os.path.join(ROOT, "configs", "dit.py")
STAND_INS = os.path.join(ROOT, "tests", "stand_ins")  # torchaudio/torchvision imports only

# (arm, framework, training.type, training.precision, training.base_dtype)
ARMS = (("full f32", "jax", "full", "float32", "float32"),
        ("LoRA f32", "jax", "lora", "float32", "float32"),
        ("full bf16 compute", "jax", "full", "bfloat16", "float32"),
        ("LoRA bf16 compute", "jax", "lora", "bfloat16", "float32"),
        ("LoRA bf16 compute, bf16 base", "jax", "lora", "bfloat16", "bfloat16"),
        ("full f32", "torch", "full", "float32", "float32"),
        ("LoRA f32", "torch", "lora", "float32", "float32"))


def _rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def _overrides(args, training_type: str, precision: str, base_dtype: str) -> dict:
  return {"model.depth": args.depth, "lora.rank": args.rank, "lora.alpha": float(args.rank),
          "training.type": training_type, "training.precision": precision,
          "training.base_dtype": base_dtype, "data.batch_size": args.batch,
          "data.synthetic_examples": 64, "mesh.data": 1, "training.steps": 1000,
          "model.cfg_dropout": 0.0}


def _timed_steps(step, n: int) -> list[float]:
  times = []
  for _ in range(n + 1):  # the first compiles (jax) or warms up (torch)
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  return times[1:]


def jax_arm(args, training_type: str, precision: str, base_dtype: str) -> dict:
  import jax
  import numpy as np
  from lora_jax import families
  from lora_jax.train import config as config_lib
  from lora_jax.train import mesh as mesh_lib
  from lora_jax.train import state as state_lib
  from lora_jax.train import step as step_lib
  rss_start = _rss_mib()
  config = config_lib.load(CONFIG, None, _overrides(args, training_type, precision, base_dtype))
  family = families.lookup(config.family).make(config.model, config.training.precision)
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
  setup = state_lib.setup(config, family, mesh)
  fn = step_lib.jit_train_step(setup.step_config, mesh, setup.state_shardings,
                               setup.frozen_shardings)
  data = family.synthetic(args.batch, 0)
  batch = {k: v[None] for k, v in data.items()}  # [accumulation 1, batch, ...]
  m = fn.lower(setup.state, setup.frozen, batch).compile().memory_analysis()
  planned = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
             + m.temp_size_in_bytes)
  nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))
  out = {"trainable": sum(x.size for x in jax.tree.leaves(setup.state.params)),
         "params": sum(x.size for x in jax.tree.leaves(state_lib.abstract_base(family))),
         "weights_bytes": nbytes(setup.frozen.base) + nbytes(setup.state.params),
         "opt_bytes": nbytes(setup.state.opt_state), "planned": planned,
         "temp": m.temp_size_in_bytes, "modules": len(setup.targets)}
  holder = {"state": setup.state}

  def step():
    holder["state"], metrics = fn(holder["state"], setup.frozen, batch)
    jax.block_until_ready(metrics)
    holder["loss"] = float(metrics["loss"])

  times = _timed_steps(step, args.steps)
  out.update(step_s=statistics.median(times), loss=holder["loss"], rss_start=rss_start,
             rss_peak=_rss_mib())
  return out


def torch_arm(args, training_type: str) -> dict:
  import peft  # before the stand-ins: transformers, under peft, would take them for torchvision
  import torch
  sys.path.insert(0, STAND_INS)
  torch.set_num_threads(os.cpu_count() or 1)
  from stable_audio_tools.models.dit import DiffusionTransformer
  rss_start = _rss_mib()
  torch.manual_seed(0)
  model = DiffusionTransformer(io_channels=64, embed_dim=1536, depth=args.depth, num_heads=24,
                               cond_token_dim=768, global_cond_dim=1536,
                               project_cond_tokens=False,
                               transformer_type="continuous_transformer")
  n_params = sum(p.numel() for p in model.parameters())
  modules = 0
  if training_type == "lora":
    names = [n for n, mod in model.named_modules()
             if isinstance(mod, torch.nn.Linear) and n.startswith("transformer.")]
    modules = len(names)
    model = peft.get_peft_model(model, peft.LoraConfig(r=args.rank, lora_alpha=args.rank,
                                                       lora_dropout=0.0, target_modules=names))
  model.train()
  trainable = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.Adam(trainable, lr=1e-4)
  g = torch.Generator().manual_seed(0)
  b, frames, tokens = args.batch, 22, 128 + 2  # prompt tokens + the two number conditioners
  x0 = torch.randn(b, 64, frames, generator=g)
  cond = torch.randn(b, tokens, 768, generator=g)
  cond_mask = torch.ones(b, tokens, dtype=torch.bool)
  glob = torch.randn(b, 1536, generator=g)

  def step():
    t = torch.rand(b)
    noise = torch.randn_like(x0)
    alpha, sigma = torch.cos(t * torch.pi / 2)[:, None, None], torch.sin(t * torch.pi / 2)[:, None, None]
    x_t, v = x0 * alpha + noise * sigma, noise * alpha - x0 * sigma
    out = model(x_t, t, cross_attn_cond=cond, cross_attn_cond_mask=cond_mask,
                global_embed=glob, use_checkpointing=False)
    loss = torch.nn.functional.mse_loss(out, v)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

  times = _timed_steps(step, args.steps)
  opt_bytes = sum(s.numel() * s.element_size() for st in opt.state.values()
                  for s in st.values() if torch.is_tensor(s))
  weights = sum(p.numel() * p.element_size() for p in model.parameters())
  return {"trainable": sum(p.numel() for p in trainable), "params": n_params,
          "weights_bytes": weights, "opt_bytes": opt_bytes, "planned": None, "temp": None,
          "modules": modules, "step_s": statistics.median(times), "rss_start": rss_start,
          "rss_peak": _rss_mib()}


def child(args) -> None:
  from lora_jax import allocator
  allocator.keep_freed_memory()  # as the launch scripts do
  name, framework, training_type, precision, base_dtype = ARMS[args.child]
  if framework == "jax":
    out = jax_arm(args, training_type, precision, base_dtype)
  else:
    out = torch_arm(args, training_type)
  print("RESULT " + json.dumps(out), flush=True)


def run_child(args, index: int) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), f"--child={index}", f"--depth={args.depth}",
         f"--batch={args.batch}", f"--rank={args.rank}", f"--steps={args.steps}"]
  t = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(f"arm {ARMS[index][:2]} failed (exit {proc.returncode}):\n"
                       f"{proc.stderr[-3000:]}")
  out = json.loads(lines[-1][len("RESULT "):])
  out["wall_s"] = time.perf_counter() - t
  return out


def paper(rank: int) -> list[str]:
  """Bytes of weights, gradients and Adam's moments at Stable Audio Open's real size."""
  import jax
  from lora_jax import families, lora
  from lora_jax.train import config as config_lib
  from lora_jax.train import state as state_lib
  config = config_lib.load(CONFIG, None, {"data.synthetic_examples": 64, "lora.rank": rank,
                                          "lora.alpha": float(rank)})
  family = families.lookup(config.family).make(config.model, "float32")
  abstract = state_lib.abstract_base(family)
  n = sum(x.size for x in jax.tree.leaves(abstract))
  dit_n = sum(x.size for x in jax.tree.leaves(abstract["model"]))  # the original's DiT
  spec = lora.LoraSpec(rank=rank, alpha=float(rank), include=tuple(config.lora.include))
  targets = lora.resolve(spec, abstract)
  r = sum(t.rank * (t.in_dim + t.out_dim) for t in targets)
  gib = lambda b: f"{b / 2**30:.2f}"
  lines = [f"Stable Audio Open's size (depth {config.model.depth}, width "
           f"{config.model.embed_dim}), abstract tree: {n:,} parameters, {dit_n:,} in the DiT "
           f"itself (the rest: our byte-token prompt embedding and the number conditioners); "
           f"LoRAW's whitelist finds {len(targets)} linear layers; rank {rank}: {r:,} LoRA "
           f"parameters ({100 * r / n:.2f}%). Adam's two moments in float32 throughout.",
           "| arm | frozen base | trained weights | gradients | Adam moments | total GiB |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
  # (row, bytes per frozen base weight, trained parameters, bytes per trained weight and grad)
  rows = (("full, float32 (also this loop's bfloat16 compute: float32 master weights)", 0, n, 4),
          ("full, bfloat16 weights and gradients (not this loop)", 0, n, 2),
          ("LoRA, float32 base", 4, r, 4),
          ("LoRA, bfloat16 base (training.base_dtype)", 2, r, 4))
  for name, base_b, trained, wb in rows:
    base = n * base_b
    weights, grads, moments = trained * wb, trained * wb, 2 * trained * 4
    lines.append(f"| {name} | {gib(base)} | {gib(weights)} | {gib(grads)} | {gib(moments)} | "
                 f"{gib(base + weights + grads + moments)} |")
  return lines


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--depth", type=int, default=4)
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--rank", type=int, default=16)  # LoRAW's example config
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--skip_torch", action="store_true")
  p.add_argument("--child", type=int, default=-1)
  p.add_argument("--paper_only", action="store_true")  # only Stable Audio Open's size on paper
  args = p.parse_args()
  if args.paper_only:
    print("\n".join(paper(args.rank)))
    return
  if args.child >= 0:
    child(args)
    return
  with open("/proc/loadavg") as f:
    load = f.read().split()[:3]
  print(f"machine: {os.cpu_count()} CPU cores, load average {' '.join(load)} at start; "
        f"depth {args.depth} at Stable Audio Open's width 1536, batch {args.batch} x 22 latent "
        f"frames, LoRA rank {args.rank} on LoRAW's `transformer` whitelist, Adam; step time: "
        f"median of {args.steps} steps after the compiling one, each arm a fresh process")
  results = {}
  for i, (name, framework, *_) in enumerate(ARMS):
    if framework == "torch" and args.skip_torch:
      continue
    results[i] = run_child(args, i)
    r = results[i]
    print(f"  {framework} {name}: {json.dumps(r)}", flush=True)
  with open("/proc/loadavg") as f:
    print(f"load average at the end: {' '.join(f.read().split()[:3])}")
  mib = lambda b: "-" if b is None else f"{b / 2**20:,.0f}"
  print("\n| framework | arm | trainable | LoRA layers | weights MiB | Adam state MiB | "
        "XLA planned MiB | peak RSS MiB | step s | vs full (same dtype) |")
  print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
  full_of = {("jax", "float32"): 0, ("jax", "bfloat16"): 2, ("torch", "float32"): 5}
  for i, r in results.items():
    name, framework, ttype, precision, _ = ARMS[i]
    ref = results[full_of[(framework, precision)]]
    print(f"| {framework} | {name} | {r['trainable']:,} | {r['modules'] or '-'} | "
          f"{mib(r['weights_bytes'])} | {mib(r['opt_bytes'])} | {mib(r['planned'])} | "
          f"{r['rss_peak']:,.0f} | {r['step_s']:.2f} | "
          f"{r['step_s'] / ref['step_s']:.2f}x time, {r['rss_peak'] / ref['rss_peak']:.2f}x RSS |")
  if not args.skip_torch:
    print("\nours / torch, float32: " + ", ".join(
        f"{ARMS[j][0]}: step time {results[j]['step_s'] / results[k]['step_s']:.2f}x, peak RSS "
        f"{results[j]['rss_peak'] / results[k]['rss_peak']:.2f}x" for j, k in ((0, 5), (1, 6))))
  print()
  print("\n".join(paper(args.rank)))


if __name__ == "__main__":
  main()
