"""Where the LoRA train step's time goes: each part timed alone, in JAX and in PyTorch.

  .venv/bin/python bench/lora_step_profile.py                    # the bench size of lora_step_bench
  XLA_FLAGS=--xla_cpu_use_onednn=true .venv/bin/python bench/lora_step_profile.py   # a flag's effect

Parts, at 4 layers, d=256, T=512, batch 8, rank 16 unless told otherwise (float32, ms per call,
best of --repeats after a warm-up):
  step        the project's jitted train step (lora_jax.train.step), optimiser included
  fwd+bwd     the loss and its gradient with respect to the LoRA tree, no optimiser
  forward     the loss alone
  attention   causal attention forward + backward for one layer, four ways: jax.nn's fused
              dot_product_attention, the same spelled as two einsums and a softmax, the project's
              blockwise CPU kernel (lora_jax.models.attention), and torch's
              scaled_dot_product_attention
  gelu        the feed-forward's exact GELU, forward + gradient: jax.nn.gelu (erfc) and the
              project's erf form (lora_jax.models.activations), and torch's
  dense       one layer's dense matmuls (q, k, v, out, ff.in, ff.out) forward + input gradient
  head+ce     the output head and cross entropy, forward + input gradient
Each part is also given as GFLOP/s where its FLOPs are plain to count, so a slow part shows
(attention counted over the causal half, as lora_step_bench.py counts it).

This machine's speed drifts by 20% or more over minutes: compare parts within one run, and take
a ratio from lora_step_bench.py, which alternates the frameworks.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lora_jax import allocator  # noqa: E402
import lora_step_bench as bench  # noqa: E402  (same directory)
from lora_jax.models import attention as attention_lib  # noqa: E402
from lora_jax.models import activations  # noqa: E402
from lora_jax.train import step as step_lib  # noqa: E402


def best_ms(fn, repeats: int) -> float:
  fn()
  fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return 1e3 * min(times)


def causal_attention_flops(b: int, h: int, t: int, k: int) -> float:
  """QK^T and PV over the causal keys (query i sees i + 1), forward once and backward twice: the
  convention of lora_step_bench.step_flops, whatever a kernel computes of the masked half."""
  return 3 * 2 * 2 * b * h * k * t * (t + 1) / 2


def report(name: str, ms: float, flops: float | None = None):
  rate = f"  {flops / ms / 1e6:7.1f} GFLOP/s" if flops else ""
  print(f"  {name:<34} {ms:8.2f} ms{rate}", flush=True)


def jax_parts(args):
  setup, fn = bench.jax_setup(args, "lora", args.batch, args.d_model, args.layers, args.d_ff)
  batch = bench.jax_batch(args.batch, args.seq_len, args.vocab)
  holder = {"state": setup.state}

  def run_step():
    holder["state"], metrics = fn(holder["state"], setup.frozen, batch)
    jax.block_until_ready(metrics)

  step_flops = bench.step_flops(args.layers, args.d_model, args.d_ff, args.vocab, args.seq_len,
                                args.batch, args.rank)
  report("step (project train step)", best_ms(run_step, args.repeats), step_flops)

  config = setup.step_config
  micro = jax.tree.map(lambda x: jnp.asarray(x[0]), batch)
  params = holder["state"].params

  def loss(p):
    return config.family.loss_fn(step_lib.forward(config, p, setup.frozen, micro, None), micro)[0]

  grad = jax.jit(jax.grad(loss))
  fwd = jax.jit(loss)
  report("fwd+bwd (grad wrt LoRA)",
         best_ms(lambda: jax.block_until_ready(grad(params)), args.repeats))
  report("forward (loss)", best_ms(lambda: jax.block_until_ready(fwd(params)), args.repeats))

  b, t, h, k = args.batch, args.seq_len, args.heads, args.d_model // args.heads
  rng = np.random.default_rng(0)
  q, kk, v = (jnp.asarray(rng.standard_normal((b, t, h, k), np.float32)) for _ in range(3))
  attn_flops = causal_attention_flops(b, h, t, k)

  def fused(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True)

  def einsum(q, k, v):
    logits = jnp.einsum("bthk,bshk->bhts", q / np.sqrt(k.shape[-1]), k)
    logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, -1e30)
    return jnp.einsum("bhts,bshk->bthk", jax.nn.softmax(logits, -1), v)

  for name, f in (("attention jax.nn fused", fused), ("attention einsum", einsum),
                  ("attention lora_jax causal (CPU)", attention_lib.causal_attention)):
    g = jax.jit(jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v) ** 2), argnums=(0, 1, 2)))
    report(name, best_ms(lambda g=g: jax.block_until_ready(g(q, kk, v)), args.repeats),
           attn_flops)

  d, f = args.d_model, args.d_ff
  x = jnp.asarray(rng.standard_normal((b * t, d), np.float32))
  ws = [jnp.asarray(rng.standard_normal(s, np.float32) * 0.02)
        for s in [(d, d)] * 4 + [(d, f), (f, d)]]

  def dense_layer(x, ws):
    q, k_, v_, o, fi, fo = ws
    y = (x @ q) + (x @ k_) + (x @ v_)
    y = y @ o
    return jnp.sum(jax.nn.gelu(y @ fi) @ fo)

  dense = jax.jit(jax.grad(dense_layer))
  dense_flops = 2 * 2 * b * t * (4 * d * d + 2 * d * f)
  report("dense (one layer, fwd + dx)",
         best_ms(lambda: jax.block_until_ready(dense(x, ws)), args.repeats), dense_flops)

  h = jnp.asarray(rng.standard_normal((b, t, f), np.float32))
  for name, act in (("gelu jax.nn (erfc)", lambda x: jax.nn.gelu(x, approximate=False)),
                    ("gelu lora_jax (erf)", activations.gelu)):
    g = jax.jit(jax.grad(lambda x, act=act: jnp.sum(act(x) * x)))
    report(name, best_ms(lambda g=g: jax.block_until_ready(g(h)), args.repeats))

  head_w = jnp.asarray(rng.standard_normal((d, args.vocab), np.float32) * 0.02)
  labels = jnp.asarray(rng.integers(0, args.vocab, (b * t,)), jnp.int32)

  def head_ce(x):
    logits = x @ head_w
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
        logits, labels[:, None], -1)[:, 0])

  head = jax.jit(jax.grad(head_ce))
  report("head+ce (fwd + dx)", best_ms(lambda: jax.block_until_ready(head(x)), args.repeats),
         2 * 2 * b * t * d * args.vocab)


def torch_parts(args):
  b, t, h, k = args.batch, args.seq_len, args.heads, args.d_model // args.heads
  g = torch.Generator().manual_seed(0)
  q, kk, v = (torch.randn(b, h, t, k, generator=g, requires_grad=True) for _ in range(3))

  def attn():
    out = torch.nn.functional.scaled_dot_product_attention(q, kk, v, is_causal=True)
    (out ** 2).sum().backward()

  report("attention torch SDPA", best_ms(attn, args.repeats), causal_attention_flops(b, h, t, k))
  d, f = args.d_model, args.d_ff
  x = torch.randn(b * t, d, generator=g, requires_grad=True)
  ws = [torch.randn(*s, generator=g) * 0.02 for s in [(d, d)] * 4 + [(d, f), (f, d)]]

  def dense():
    qw, kw, vw, o, fi, fo = ws
    y = ((x @ qw) + (x @ kw) + (x @ vw)) @ o
    (torch.nn.functional.gelu(y @ fi) @ fo).sum().backward()

  report("dense torch (one layer, fwd + dx)", best_ms(dense, args.repeats),
         2 * 2 * b * t * (4 * d * d + 2 * d * f))
  h = torch.randn(b, t, f, generator=g, requires_grad=True)

  def gelu():
    (torch.nn.functional.gelu(h) * h.detach()).sum().backward()

  report("gelu torch", best_ms(gelu, args.repeats))


def main():
  allocator.keep_freed_memory()  # as the launch scripts do; before JAX starts its threads
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  for name, default in (("layers", 4), ("d_model", 256), ("d_ff", 1024), ("heads", 4),
                        ("vocab", 512), ("seq_len", 512), ("batch", 8), ("rank", 16),
                        ("repeats", 5)):
    p.add_argument(f"--{name}", type=int, default=default)
  args = p.parse_args()
  torch.set_num_threads(os.cpu_count() or 1)
  print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; {args.layers} layers, d={args.d_model}, "
        f"T={args.seq_len}, batch {args.batch}, rank {args.rank}")
  print("jax:")
  jax_parts(args)
  print("torch:")
  torch_parts(args)


if __name__ == "__main__":
  main()
